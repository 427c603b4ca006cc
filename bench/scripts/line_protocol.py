#!/usr/bin/env python3
"""Line protocol ingest: starts the collector BINARY with its defaults on a free port, posts
REQUESTS writes of 5,000 lines with 10 float fields each from 4 threads to /api/v2/write, and
prints points/s and the collector's CPU seconds per million points (from /proc).

Usage: bench/scripts/line_protocol.py target/release/tributary-collector 100
"""
import sys, os, time, threading, urllib.request, hashlib, subprocess, tempfile, shutil, socket
binary = sys.argv[1]; requests = int(sys.argv[2])
d = tempfile.mkdtemp()
token = "lpbench-token"; h = hashlib.sha256(token.encode()).hexdigest()
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
open(f"{d}/c.toml","w").write(f'[server]\nlisten = "127.0.0.1:{port}"\n[storage]\npath = "{d}/c.db"\n[[agents]]\nid = "bench"\ntoken_sha256 = "{h}"\n')
p = subprocess.Popen([binary, "--config", f"{d}/c.toml"], stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz"); break
    except Exception: time.sleep(0.1)
base = 1_700_000_000
bodies = []
for r in range(requests):
    lines = []
    for i in range(5000):
        host = i % 100; t = base + (r * 50 + i // 100) * 10
        fields = ",".join(f"f{k}={(r*7+i*3+k)%1000/10.0}" for k in range(10))
        lines.append(f"cpu,host=h{host},region=r{host%4} {fields} {t}")
    bodies.append(("\n".join(lines)+"\n").encode())
def clk(): 
    f=open(f"/proc/{p.pid}/stat").read().split(); return (int(f[13])+int(f[14]))/os.sysconf("SC_CLK_TCK")
idx = [0]; lock = threading.Lock()
def worker():
    while True:
        with lock:
            if idx[0] >= len(bodies): return
            b = bodies[idx[0]]; idx[0] += 1
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/write?precision=s", data=b, headers={"Authorization": f"Token {token}"})
        urllib.request.urlopen(req).read()
c0 = clk(); t0 = time.time()
ts = [threading.Thread(target=worker) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
el = time.time() - t0; cpu = clk() - c0
pts = requests * 5000 * 10
print(f"{binary}: {pts} points in {el:.2f} s = {pts/el:,.0f} points/s; collector {cpu/ (pts/1e6):.2f} CPU s per million")
p.kill(); shutil.rmtree(d)
