import sys, re, collections
# perf script output -> for memmove/memset/malloc samples, the first "interesting" frame
target = sys.argv[1] if len(sys.argv) > 1 else 'memmove'
skip = re.compile(r'copy_nonoverlapping|extend_from_slice|put_slice|spec_extend|copy_from_slice|muxado::copy::|to_vec|alloc::|clone|memmove|extend_trusted|<.* as core::|core::ptr|Vec<T,A>|RawVec|resize|extend_with|copy_within|std::io::impls|io::Write|write_all|from_slice|__memmove|write_vectored')
cnt = collections.Counter(); tot = 0; total = 0
frames = []; 
def flush():
    global tot, total
    if not frames: return
    total += 1
    if re.search(target, frames[0]):
        tot += 1
        k = '?'
        for f in frames[1:]:
            if not skip.search(f):
                k = f; break
        cnt[k] += 1
for line in sys.stdin:
    if not line.strip():
        flush(); frames = []; continue
    if not line.startswith(('\t', ' ')):
        flush(); frames = []; continue
    parts = line.strip().split(' ', 1)
    name = parts[1] if len(parts) > 1 else parts[0]
    name = re.sub(r'\+0x[0-9a-f]+', '', name)
    name = re.sub(r' \(.*\)$', '', name)
    frames.append(name)
flush()
print(f"{target}: {tot} of {total} samples ({100*tot/max(total,1):.1f}%)")
for k, v in cnt.most_common(20):
    print(f"{100*v/max(tot,1):5.1f}%  {k[:150]}")
