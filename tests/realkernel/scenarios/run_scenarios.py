import json, os, subprocess, sys, time
out = sys.argv[1]
with open(os.path.join(out, "results.jsonl"), "a") as f:
    t = time.monotonic()
    p = subprocess.run(["lspci", "-k"], capture_output=True, text=True)
    f.write(json.dumps({"name": "smoke", "ok": p.returncode == 0, "detail": p.stdout + p.stderr, "seconds": time.monotonic() - t}) + "\n")
    p = subprocess.run([sys.executable, "-c", "import click, rich, tabulate, pyudev; print(pyudev.Context().list_devices(subsystem='pci'))"], capture_output=True, text=True)
    f.write(json.dumps({"name": "imports", "ok": p.returncode == 0, "detail": p.stdout + p.stderr, "seconds": time.monotonic() - t}) + "\n")
