#!/usr/bin/env bash
# Regenerates perf/tunnel.md, perf/tunnel.json and perf/tunnel-*.svg: every
# tunnel side by side in one run, against the same origin, with the same
# placement.
#
# Peers: direct (no tunnel: the ceiling), haproxy (mode tcp), rathole, bore,
# ngrok-muxado (this repo's tunnel protocol on ngrok's `muxado` crate over
# tokio: `muxado gateway/agent --runtime ngrok-tokio`), muxado (gateway +
# agent on the io_uring engine), muxado-tls (the same with TLS between agent
# and gateway: a CA and gateway certificate made by openssl in perf/tmp).
# Not in the default list: muxado-noidle (muxado with --idle-timeout 0, for
# A/B runs of the idle watchdog's cost).
#
# Placement: the origin (nginx, one worker), iperf3 and the load generators
# run on CPU $LOAD_CPU; every tunnel process (both ends) runs on CPU
# $TUNNEL_CPU (taskset), so each tunnel gets exactly one CPU.
#
# Installs what it needs: Debian's nginx-light, wrk, iperf3, haproxy
# (apt-get), and rathole and bore-cli from crates.io into perf/tmp/ (ignored
# by git).
#
# Environment: DURATION (seconds per measurement, default 10), IDLE (idle
# connections for the memory figure, default 1000), PEERS (default all),
# LOAD_CPU (0), TUNNEL_CPU (1), SEPARATE_SESSIONS (0) and AUTOGROUP_NICE
# (unset; both: see SPAWN below). A
# short check: DURATION=2 IDLE=200.
#
# A/B mode: MEASURE (a subset of "keepalive close iperf1 iperf8 idle") and
# ROUNDS (default 1) run only those measurements, ROUNDS times over PEERS
# interleaved (peer order rotates each round), and print every figure with
# the median and min–max per peer; perf/ is left untouched. For example
# MEASURE=keepalive ROUNDS=5 DURATION=3 PEERS="ngrok-muxado muxado bore".
set -euo pipefail
cd "$(dirname "$0")/.."

export DURATION="${DURATION:-10}"
export IDLE="${IDLE:-1000}"
export PEERS="${PEERS:-direct haproxy rathole bore ngrok-muxado muxado muxado-tls}"
export LOAD_CPU="${LOAD_CPU:-0}"
export TUNNEL_CPU="${TUNNEL_CPU:-1}"
export MEASURE="${MEASURE:-}"
export ROUNDS="${ROUNDS:-1}"

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v iperf3 >/dev/null || need_apt+=(iperf3)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v python3 >/dev/null || need_apt+=(python3)
command -v openssl >/dev/null || need_apt+=(openssl)
if ((${#need_apt[@]})); then
    echo "installing ${need_apt[*]} (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi
mkdir -p perf/tmp
if [[ " $PEERS " == *" rathole "* && ! -x perf/tmp/bin/rathole ]]; then
    # Not --locked: rathole 0.5.0's lockfile pins a `time` that no longer
    # builds on current Rust.
    echo "installing rathole (cargo install into perf/tmp)" >&2
    cargo install --root perf/tmp rathole >&2
fi
if [[ " $PEERS " == *" bore "* && ! -x perf/tmp/bin/bore ]]; then
    echo "installing bore-cli (cargo install into perf/tmp)" >&2
    cargo install --locked --root perf/tmp bore-cli >&2
fi
cargo build --release --bin muxado >&2
ulimit -n "$(ulimit -Hn)"
echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec python3 - <<'PY'
import json, os, re, shutil, signal, socket, subprocess, sys, time

D = float(os.environ["DURATION"])
IDLE = int(os.environ["IDLE"])
PEERS = os.environ["PEERS"].split()
LOAD_CPU = os.environ["LOAD_CPU"]
TUN_CPU = os.environ["TUNNEL_CPU"]
ROOT = os.getcwd()
TMP = os.path.join(ROOT, "perf/tmp/tunnel-bench")
BIN = os.path.join(ROOT, "target/release/muxado")
RATHOLE = os.path.join(ROOT, "perf/tmp/bin/rathole")
BORE = os.path.join(ROOT, "perf/tmp/bin/bore")
TOKEN = "bench-token"
shutil.rmtree(TMP, ignore_errors=True)
os.makedirs(TMP)

ORIGIN_HTTP, ORIGIN_IPERF = 18080, 15201
procs = []

# Each process gets its own process group (so that stop() can signal its
# whole tree) but stays in this script's session. A session of its own
# (setsid) would also give it its own scheduler autogroup
# (/proc/sys/kernel/sched_autogroup_enabled): every hand-off between two
# tunnel processes would then wait for the other autogroups on that CPU (other
# users' builds on a shared machine), and the figures measured the machine's
# load more than the tunnel (muxado keep-alive: 11-14k req/s in separate
# sessions, 52-60k in one, same binary, back to back). SEPARATE_SESSIONS=1
# brings the old behaviour back for comparison.
SPAWN = ({"start_new_session": True} if os.environ.get("SEPARATE_SESSIONS") == "1"
         else {"process_group": 0})

# AUTOGROUP_NICE=-10 (say) weighs this session's autogroup above the other
# users' for the run (restored at exit): closer to a quiet machine, at their
# expense. Off by default.
AUTOGROUP_OLD = None
if os.environ.get("AUTOGROUP_NICE"):
    try:
        with open("/proc/self/autogroup") as f:
            AUTOGROUP_OLD = f.read().split("nice")[1].strip()
        with open("/proc/self/autogroup", "w") as f:
            f.write(os.environ["AUTOGROUP_NICE"])
        print(f"autogroup nice {AUTOGROUP_OLD} -> {os.environ['AUTOGROUP_NICE']} for this run", file=sys.stderr)
    except (OSError, IndexError) as e:
        raise SystemExit(f"AUTOGROUP_NICE: cannot set this session's autogroup nice: {e}")

def restore_autogroup():
    if AUTOGROUP_OLD is not None:
        with open("/proc/self/autogroup", "w") as f:
            f.write(AUTOGROUP_OLD)

def log(*a):
    print(*a, file=sys.stderr, flush=True)

def start(cmd, cpu, name, env=None):
    out = open(os.path.join(TMP, name + ".log"), "w")
    e = dict(os.environ, MUXADO_TOKEN=TOKEN, RUST_LOG="warn")
    if env:
        e.update(env)
    p = subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=e, **SPAWN)
    procs.append(p)
    return p

def stop(ps):
    for p in ps:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in ps:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if p in procs:
            procs.remove(p)

def wait_port(port, limit=15):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")

def wait_http(port, limit=15):
    """Until a request through the tunnel gets an answer (the agent is connected)."""
    end = time.time() + limit
    while time.time() < end:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.settimeout(1)
            if s.recv(100).startswith(b"HTTP/1.1 200"):
                s.close()
                return
            s.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"no HTTP answer through port {port}")

def tree(pid):
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out

def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total

def ctx_switches(pids):
    """Context switches (voluntary, involuntary) of pids' threads."""
    vol = inv = 0
    for p in pids:
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            inv += int(line.split()[1])
        except OSError:
            pass
    return vol, inv

def cpu_s(pids):
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / tck

# ---- origin: nginx (one worker) and iperf3, on the load CPU ---------------------------------
www = os.path.join(TMP, "www")
os.makedirs(www)
with open(os.path.join(www, "index.html"), "w") as f:
    f.write("<!DOCTYPE html><html><head><title>tunnel bench</title></head><body>" + "x" * 512 + "</body></html>\n")
conf = os.path.join(TMP, "nginx.conf")
with open(conf, "w") as f:
    f.write(f"""
worker_processes 1;
user root;
pid {TMP}/nginx.pid;
error_log {TMP}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {TMP}/body; proxy_temp_path {TMP}/proxy;
    fastcgi_temp_path {TMP}/fcgi; uwsgi_temp_path {TMP}/uwsgi; scgi_temp_path {TMP}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_header_timeout 300s;
    server {{ listen 127.0.0.1:{ORIGIN_HTTP} backlog=4096; root {www}; }}
}}
""")
for port in (ORIGIN_HTTP, ORIGIN_IPERF):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        raise SystemExit(f"port {port} is already in use; stop whatever listens there")
    except OSError:
        pass
origin = [start(["nginx", "-c", conf, "-g", "daemon off;"], LOAD_CPU, "nginx"),
          start(["iperf3", "-s", "-p", str(ORIGIN_IPERF)], LOAD_CPU, "iperf3-server")]
wait_port(ORIGIN_HTTP)
wait_port(ORIGIN_IPERF)

# ---- peers: each returns (processes, http port, iperf port) ---------------------------------
def peer_direct():
    return [], ORIGIN_HTTP, ORIGIN_IPERF

def peer_haproxy():
    cfg = os.path.join(TMP, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""
global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend http
    bind 127.0.0.1:20080
    default_backend http
backend http
    server origin 127.0.0.1:{ORIGIN_HTTP}
frontend iperf
    bind 127.0.0.1:20201
    default_backend iperf
backend iperf
    server origin 127.0.0.1:{ORIGIN_IPERF}
""")
    p = start(["haproxy", "-f", cfg, "-db"], TUN_CPU, "haproxy")
    wait_port(20080)
    return [p], 20080, 20201

def peer_rathole():
    s, c = os.path.join(TMP, "rathole-server.toml"), os.path.join(TMP, "rathole-client.toml")
    with open(s, "w") as f:
        f.write(f"""[server]
bind_addr = "127.0.0.1:21000"
default_token = "{TOKEN}"
[server.services.http]
bind_addr = "127.0.0.1:21080"
[server.services.iperf]
bind_addr = "127.0.0.1:21201"
""")
    with open(c, "w") as f:
        f.write(f"""[client]
remote_addr = "127.0.0.1:21000"
default_token = "{TOKEN}"
[client.services.http]
local_addr = "127.0.0.1:{ORIGIN_HTTP}"
[client.services.iperf]
local_addr = "127.0.0.1:{ORIGIN_IPERF}"
""")
    ps = [start([RATHOLE, "--server", s], TUN_CPU, "rathole-server")]
    wait_port(21000)
    ps.append(start([RATHOLE, "--client", c], TUN_CPU, "rathole-client"))
    wait_http(21080)
    return ps, 21080, 21201

def peer_bore():
    ps = [start([BORE, "server", "--bind-addr", "127.0.0.1", "--min-port", "22000", "--max-port", "22999"], TUN_CPU, "bore-server")]
    wait_port(7835)
    ps.append(start([BORE, "local", "-l", "127.0.0.1", str(ORIGIN_HTTP), "--to", "127.0.0.1", "--port", "22080"], TUN_CPU, "bore-http"))
    ps.append(start([BORE, "local", "-l", "127.0.0.1", str(ORIGIN_IPERF), "--to", "127.0.0.1", "--port", "22201"], TUN_CPU, "bore-iperf"))
    wait_http(22080)
    wait_port(22201)
    return ps, 22080, 22201

def tls_files():
    """A CA and a gateway certificate it signed (for 127.0.0.1), made once by openssl."""
    d = os.path.join(TMP, "tls")
    ca, cert, key = (os.path.join(d, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    if not os.path.exists(cert):
        os.makedirs(d, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda args: subprocess.run(["openssl", *args], check=True, capture_output=True)
        run(["req", "-x509", *ec, "-keyout", os.path.join(d, "ca-key.pem"), "-out", ca,
             "-days", "2", "-subj", "/CN=muxado bench CA"])
        run(["req", *ec, "-keyout", key, "-out", os.path.join(d, "gw.csr"), "-subj", "/CN=127.0.0.1"])
        ext = os.path.join(d, "ext.cnf")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        run(["x509", "-req", "-in", os.path.join(d, "gw.csr"), "-CA", ca, "-CAkey", os.path.join(d, "ca-key.pem"),
             "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext])
    return ca, cert, key

def muxado_pair(runtime, base, tls=False, gw_extra=(), tag=None):
    gw_tls, ag_tls, tag = [], [], tag or runtime
    if tls:
        ca, cert, key = tls_files()
        gw_tls, ag_tls = ["--tls-cert", cert, "--tls-key", key], ["--tls-ca", ca]
    gw = start([BIN, "gateway", "--runtime", runtime, "--agents", f"127.0.0.1:{base}",
                "--expose", f"http=127.0.0.1:{base + 80}", "--expose", f"iperf=127.0.0.1:{base + 201}",
                *gw_tls, *gw_extra],
               TUN_CPU, f"{tag}-gateway")
    wait_port(base)
    ag = start([BIN, "agent", "--runtime", runtime, "--gateway", f"127.0.0.1:{base}",
                "--forward", f"http=127.0.0.1:{ORIGIN_HTTP}", "--forward", f"iperf=127.0.0.1:{ORIGIN_IPERF}",
                *ag_tls],
               TUN_CPU, f"{tag}-agent")
    wait_http(base + 80)
    return [gw, ag], base + 80, base + 201

PEER_FNS = {
    "direct": peer_direct,
    "haproxy": peer_haproxy,
    "rathole": peer_rathole,
    "bore": peer_bore,
    "ngrok-muxado": lambda: muxado_pair("ngrok-tokio", 23000),
    "muxado": lambda: muxado_pair("uring", 24000),
    "muxado-tls": lambda: muxado_pair("uring", 25000, tls=True, tag="uring-tls"),
    "muxado-noidle": lambda: muxado_pair("uring", 26000, gw_extra=["--idle-timeout", "0"], tag="uring-noidle"),
}

# ---- measurements ----------------------------------------------------------------------------
def to_ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

def cpu_ticks(cpu):
    """(busy, total) jiffies of one CPU, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return sum(v) - v[3] - v[4], sum(v)
    return 0, 0

def busy_pct(before, after):
    dt = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / dt if dt else None

def wrk(port, close):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", f"-d{D:g}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    # How busy both CPUs were (everyone's work, other users' too): a load
    # CPU near 100% means wrk + the origin, not the tunnel, set the rate.
    l0, t0 = cpu_ticks(LOAD_CPU), cpu_ticks(TUN_CPU)
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    l1, t1 = cpu_ticks(LOAD_CPU), cpu_ticks(TUN_CPU)
    if "Requests/sec" not in out:
        raise SystemExit(f"wrk failed on port {port}:\n{out}")
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
         "requests": int(re.search(r"(\d+) requests in", out).group(1)),
         "load_cpu_busy_pct": busy_pct(l0, l1), "tunnel_cpu_busy_pct": busy_pct(t0, t1)}
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        r[key] = to_ms(m.group(1), m.group(2)) if m else None
    errs = re.search(r"Socket errors: (.*)", out)
    r["errors"] = errs.group(1).strip() if errs else ""
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    return r

def iperf(port, streams):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(port),
                          "-t", str(max(1, int(D))), "-P", str(streams), "-J"],
                         capture_output=True, text=True).stdout
    j = json.loads(out)
    if "error" in j:
        return {"gbps": None, "error": j["error"]}
    total = j["end"]["sum_received"]["bits_per_second"] / 1e9
    per = [s["receiver"]["bits_per_second"] / 1e9 for s in j["end"]["streams"]]
    return {"gbps": total, "stream_min": min(per), "stream_max": max(per)}

def idle_memory(port, pids):
    time.sleep(0.5)
    before = rss_kib(pids)
    socks = []
    for _ in range(IDLE):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    # Let the tunnel finish setting up the idle ones (agents dial the origin).
    time.sleep(1.0)
    after = rss_kib(pids)
    for s in socks:
        s.close()
    return {"rss_before_kib": before, "rss_after_kib": after,
            "kib_per_conn": (after - before) / IDLE if pids else 0.0}

MEASURE = os.environ["MEASURE"].split()
if MEASURE:
    ROUNDS = int(os.environ["ROUNDS"])
    unknown = set(MEASURE) - {"keepalive", "close", "iperf1", "iperf8", "idle"}
    if unknown:
        raise SystemExit(f"unknown MEASURE entries: {sorted(unknown)}")
    figs = {}  # (peer, label) -> [values]
    def note(peer, label, v):
        if v is not None:
            figs.setdefault((peer, label), []).append(v)
    try:
        for rnd in range(ROUNDS):
            order = PEERS[rnd % len(PEERS):] + PEERS[:rnd % len(PEERS)]
            for name in order:
                ps, http, ip = PEER_FNS[name]()
                pids = [q for p in ps for q in tree(p.pid)]
                line = [f"round {rnd + 1} {name:>13}"]
                if "keepalive" in MEASURE:
                    c0, x0 = cpu_s(pids), ctx_switches(pids)
                    k = wrk(http, False)
                    c1, x1 = cpu_s(pids), ctx_switches(pids)
                    cpu = (c1 - c0) / k["requests"] * 1e5 if pids else None
                    if pids:
                        note(name, "vol ctxsw/1k req", (x1[0] - x0[0]) / k["requests"] * 1e3)
                        note(name, "invol ctxsw/1k req", (x1[1] - x0[1]) / k["requests"] * 1e3)
                    note(name, "keep-alive req/s", k["rps"]); note(name, "keep-alive p99 ms", k["p99_ms"])
                    note(name, "CPU s/100k req", cpu)
                    note(name, "load CPU busy %", k["load_cpu_busy_pct"])
                    note(name, "tunnel CPU busy %", k["tunnel_cpu_busy_pct"])
                    line.append(f"keep-alive {k['rps']:,.0f} req/s p99 {k['p99_ms']} ms {k['errors']}")
                if "close" in MEASURE:
                    c = wrk(http, True)
                    note(name, "close conns/s", c["rps"])
                    line.append(f"close {c['rps']:,.0f}/s {c['errors']}")
                if "iperf1" in MEASURE:
                    i1 = iperf(ip, 1)
                    note(name, "iperf3 1 Gbit/s", i1.get("gbps"))
                    line.append(f"iperf1 {i1.get('gbps')}")
                if "iperf8" in MEASURE:
                    i8 = iperf(ip, 8)
                    note(name, "iperf3 -P 8 Gbit/s", i8.get("gbps"))
                    line.append(f"iperf8 {i8.get('gbps')}")
                if "idle" in MEASURE:
                    pids = [q for p in ps for q in tree(p.pid)]
                    note(name, "KiB/idle conn", idle_memory(http, pids)["kib_per_conn"])
                log(" | ".join(line))
                stop(ps)
                time.sleep(0.5)
    finally:
        stop(list(procs))
        restore_autogroup()
    print(f"{ROUNDS} rounds, {D:g} s per measurement, load average {open('/proc/loadavg').read().split()[:3]}")
    for label in dict.fromkeys(l for (_, l) in figs):
        for name in PEERS:
            vs = sorted(figs.get((name, label), []))
            if vs:
                med = vs[len(vs) // 2] if len(vs) % 2 else (vs[len(vs) // 2 - 1] + vs[len(vs) // 2]) / 2
                print(f"{label:>20} {name:>13}: median {med:,.3f}  min {vs[0]:,.3f}  max {vs[-1]:,.3f}  "
                      f"(all: {', '.join(f'{v:,.3f}' for v in vs)})")
    sys.exit(0)

results = []
try:
    for name in PEERS:
        log(f"== {name}")
        ps, http, ip = PEER_FNS[name]()
        pids = [q for p in ps for q in tree(p.pid)]
        r = {"peer": name}
        c0 = cpu_s(pids)
        r["keepalive"] = wrk(http, False)
        c1 = cpu_s(pids)
        r["cpu_s_per_100k"] = (c1 - c0) / r["keepalive"]["requests"] * 1e5 if pids else 0.0
        log(f"   keep-alive {r['keepalive']}")
        r["close"] = wrk(http, True)
        log(f"   close      {r['close']}")
        r["iperf1"] = iperf(ip, 1)
        r["iperf8"] = iperf(ip, 8)
        log(f"   iperf3     {r['iperf1']} / -P 8 {r['iperf8']}")
        pids = [q for p in ps for q in tree(p.pid)]
        r["idle"] = idle_memory(http, pids)
        log(f"   idle       {r['idle']}")
        results.append(r)
        stop(ps)
        time.sleep(1)
finally:
    stop(list(procs))
    restore_autogroup()

# ---- report ----------------------------------------------------------------------------------
meta = {
    "duration_s": D, "idle_connections": IDLE,
    "placement": f"origin (nginx, 1 worker), iperf3, wrk on CPU {LOAD_CPU}; every tunnel process on CPU {TUN_CPU} (taskset)",
    "cpus": os.cpu_count(), "kernel": os.uname().release,
    "loadavg_after": open("/proc/loadavg").read().split()[:3],
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
}
os.makedirs("perf", exist_ok=True)
with open("perf/tunnel.json", "w") as f:
    json.dump({"meta": meta, "results": results}, f, indent=1)

by = {r["peer"]: r for r in results}
def fmt(v, p=1):
    return "–" if v is None else f"{v:,.{p}f}"

rows = ["| peer | keep-alive req/s | p50 ms | p99 ms | load / tunnel CPU busy % (keep-alive) | close conns/s | iperf3 1 Gbit/s | iperf3 -P 8 Gbit/s (per stream min–max) | KiB per idle conn | CPU s per 100k req |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for r in results:
    k, c, i1, i8 = r["keepalive"], r["close"], r["iperf1"], r["iperf8"]
    spread = f"{fmt(i8.get('stream_min'), 2)}–{fmt(i8.get('stream_max'), 2)}" if i8.get("gbps") else "–"
    rows.append(f"| {r['peer']} | {fmt(k['rps'], 0)} | {fmt(k['p50_ms'], 3)} | {fmt(k['p99_ms'], 3)} | "
                f"{fmt(k['load_cpu_busy_pct'], 0)} / {fmt(k['tunnel_cpu_busy_pct'], 0)} | {fmt(c['rps'], 0)} | {fmt(i1.get('gbps'), 2)} | {fmt(i8.get('gbps'), 2)} ({spread}) | "
                f"{fmt(r['idle']['kib_per_conn'], 1)} | {fmt(r['cpu_s_per_100k'], 2)} |")

goals = []
m, ra, ha = by.get("muxado"), by.get("rathole"), by.get("haproxy")
def ratio(a, b):
    return a / b if a is not None and b else None
def goal(label, value, target, higher):
    if value is None:
        goals.append(f"| {label} | – | {target} | not measured |")
        return
    ok = value >= target if higher else value <= target
    goals.append(f"| {label} | {value:.2f}× | {'≥' if higher else '≤'} {target}× | {'met' if ok else 'NOT met'} |")
if m and ra:
    goal("keep-alive req/s vs rathole", ratio(m["keepalive"]["rps"], ra["keepalive"]["rps"]), 1.3, True)
    goal("keep-alive p99 vs rathole", ratio(m["keepalive"]["p99_ms"], ra["keepalive"]["p99_ms"]), 0.8, False)
    goal("Connection: close conns/s vs rathole", ratio(m["close"]["rps"], ra["close"]["rps"]), 2.0, True)
    goal("iperf3 single stream vs rathole", ratio(m["iperf1"].get("gbps"), ra["iperf1"].get("gbps")), 1.0, True)
    goal("memory per idle connection vs rathole", ratio(m["idle"]["kib_per_conn"], ra["idle"]["kib_per_conn"]), 0.5, False)
if m and ha:
    goal("keep-alive req/s vs haproxy", ratio(m["keepalive"]["rps"], ha["keepalive"]["rps"]), 0.85, True)

errors = [f"- {r['peer']} {kind}: {r[kind]['errors']} {('non-2xx: ' + str(r[kind]['non2xx'])) if r[kind]['non2xx'] else ''}"
          for r in results for kind in ("keepalive", "close") if r[kind]["errors"] or r[kind]["non2xx"]]

# SVG bar charts.
def bars(fname, title, unit, series):
    names = [r["peer"] for r in results]
    groups = len(series)
    vals = [[(fn(r) or 0.0) for r in results] for _, fn in series]
    top = max([v for vs in vals for v in vs] + [1e-9])
    W, H, left, bottom = 720, 60 + 34 * len(names) * groups, 130, 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<text x="{W/2}" y="20" text-anchor="middle" font-size="14">{title} ({unit})</text>']
    colors = ["#4e79a7", "#f28e2b", "#59a14f"]
    y = 40
    for i, n in enumerate(names):
        for g in range(groups):
            v = vals[g][i]
            w = (W - left - 90) * v / top
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="26" fill="{colors[g % 3]}"/>')
            label = n if groups == 1 else f"{n} {series[g][0]}"
            out.append(f'<text x="{left - 6}" y="{y + 17}" text-anchor="end">{label}</text>')
            out.append(f'<text x="{left + w + 4:.1f}" y="{y + 17}">{v:,.2f}</text>')
            y += 30
        y += 4
    out.append("</svg>")
    with open(f"perf/{fname}", "w") as f:
        f.write("\n".join(out))

bars("tunnel-keepalive.svg", "wrk keep-alive, 64 connections", "requests/s", [("", lambda r: r["keepalive"]["rps"])])
bars("tunnel-p99.svg", "wrk keep-alive p99 latency", "ms", [("", lambda r: r["keepalive"]["p99_ms"])])
bars("tunnel-close.svg", "wrk Connection: close, 64 connections", "new connections/s", [("", lambda r: r["close"]["rps"])])
bars("tunnel-iperf3.svg", "iperf3 through the tunnel", "Gbit/s",
     [("1 stream", lambda r: r["iperf1"].get("gbps")), ("-P 8", lambda r: r["iperf8"].get("gbps"))])
bars("tunnel-memory.svg", f"RSS growth with {IDLE} idle tunneled connections", "KiB per connection",
     [("", lambda r: r["idle"]["kib_per_conn"])])

short = ["**A short check run** (measurements under 10 s, or fewer than 1,000 idle connections): "
         "it shows the script works, not the recorded figures.", ""] if D < 10 or IDLE < 1000 else []
md = [f"# Tunnel benchmark", "", *short,
      f"Regenerated by `scripts/tunnel-bench.sh` on {meta['date']} ({meta['cpus']} CPUs, kernel {meta['kernel']}, "
      f"load average after the run {' '.join(meta['loadavg_after'])}).", "",
      f"Placement: {meta['placement']}. Each measurement runs {D:g} s; memory is the growth of the tunnel "
      f"processes' RSS (both ends together) with {IDLE} idle tunneled connections; CPU is the tunnel processes' "
      f"user+system time during the keep-alive run, per 100k requests. Load / tunnel CPU busy % is how busy "
      f"CPU {LOAD_CPU} and CPU {TUN_CPU} were during the keep-alive run (every process, other users' too): "
      f"a load CPU near 100% means wrk and the origin, not the tunnel, set the rate.", "",
      "Peers: direct = wrk/iperf3 straight to the origin (the ceiling; no tunnel process); haproxy `mode tcp` "
      "(one thread); rathole (server + client); bore (server + one client per service); ngrok-muxado = this "
      "repo's tunnel protocol on ngrok's `muxado` crate over tokio (`--runtime ngrok-tokio`); muxado = "
      "`muxado gateway` + `muxado agent` on the io_uring engine (one core each); muxado-tls = the same "
      "with TLS 1.3 between agent and gateway (`--tls-cert/--tls-key`, `--tls-ca`).", "",
      *rows, "", "## Goals (muxado against rathole and haproxy)", "",
      "| goal | measured | target | |", "| --- | --- | --- | --- |", *goals, "",
      "![keep-alive](tunnel-keepalive.svg)", "![p99](tunnel-p99.svg)", "![close](tunnel-close.svg)",
      "![iperf3](tunnel-iperf3.svg)", "![memory](tunnel-memory.svg)", ""]
if errors:
    md += ["## Errors reported by wrk", "", *errors, ""]
with open("perf/tunnel.md", "w") as f:
    f.write("\n".join(md))
print("\n".join(rows + [""] + goals))
PY
