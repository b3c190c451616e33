#!/usr/bin/env python3
"""Screenshots of the dashboard on the demo's data, for the README.

Usage: cargo build && python3 scripts/dashboard-screenshots.py [OUT_DIR]
(default docs/dashboard). Needs Debian's chromium and chromium-driver.
Runs `renkei demo --keep`, signs in as its `demo` operator over WebDriver,
saves a PNG per page, then stops the demo and chromedriver.
"""
import json, subprocess, time, urllib.request, base64, re, os, sys, socket, tempfile, shutil
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(repo, "docs", "dashboard")
profile = tempfile.mkdtemp(prefix="renkei-shots-")
os.makedirs(out_dir, exist_ok=True)
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
port = free_port()
driver = subprocess.Popen(["/usr/bin/chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
demo = subprocess.Popen([os.path.join(repo, "target", "debug", "renkei"), "demo", "--keep"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
base = pw = None
deadline = time.time() + 120
while time.time() < deadline:
    line = demo.stdout.readline()
    m = re.search(r"the dashboard: (\S+)/dashboard/login  \(name: demo, password: (\S+)\)", line)
    if m: base, pw = m.group(1), m.group(2); break
assert base, "no dashboard line"
def wd(method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=json.dumps(body).encode() if body is not None else None, headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())["value"]
caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900", "--user-data-dir=" + profile]}}}}
sid = wd("POST", "/session", caps)["sessionId"]
def go(url): wd("POST", f"/session/{sid}/url", {"url": url})
def find(css): return list(wd("POST", f"/session/{sid}/element", {"using": "css selector", "value": css}).values())[0]
def shot(name):
    png = base64.b64decode(wd("GET", f"/session/{sid}/screenshot"))
    open(os.path.join(out_dir, name + ".png"), "wb").write(png)
go(base + "/dashboard/login")
wd("POST", f"/session/{sid}/element/{find('#name')}/value", {"text": "demo"})
wd("POST", f"/session/{sid}/element/{find('#password')}/value", {"text": pw})
wd("POST", f"/session/{sid}/element/{find('#sign-in')}/click", {})
time.sleep(1)
shot("overview")
for name, path in [("campaign", "/dashboard/campaigns/trial_followup"), ("deliveries", "/dashboard/deliveries")]:
    go(base + path); time.sleep(0.5); shot(name)
wd("DELETE", f"/session/{sid}")
demo.terminate(); driver.terminate(); demo.wait(); driver.wait()
shutil.rmtree(profile, ignore_errors=True)
print("screenshots in", out_dir)
