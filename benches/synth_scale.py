"""synth at scale: `python3 synth_scale.py SYNTH OUT_DIR` prints JSON.

For 100, 1,000 and 10,000 applications (the shape of crates/synth/tests/common/mod.rs's
large_spec): render time (best of 3) and peak memory (max RSS) with /usr/bin/time, the stacks
written, and the largest template's size and resource count against CloudFormation's quotas
(1 MB template via S3, 500 resources, 200 outputs).
"""
import json
import os
import re
import shutil
import subprocess
import sys


def spec(apps: int) -> str:
    s = ["version: 1", "name: scale", "models:", "  haiku: anthropic.claude-3-5-haiku-20241022-v1:0",
         "  nova-lite: amazon.nova-lite-v1:0", "  nova-micro: amazon.nova-micro-v1:0",
         "defaults: { max_tokens: 1024 }", "access: [rest, queue]", "alerts:", "  emails: [finops@example.com]",
         "applications:"]
    for i in range(apps):
        s += [f"  team-{i:05}:", f"    cost_center: cc-{i % 97:03}", "    models: [haiku, nova-lite]", "    limits:",
              f"      - {{ window: minute, tokens: {100_000 + i * 10} }}", f"      - {{ window: day, usd: {20 + i % 50} }}",
              f"      - {{ window: month, usd: {400 + i % 500} }}"]
        if i % 10 == 0:
            s.append("    on_exceed: { action: fallback, model: nova-micro }")
        if i % 7 == 0:
            s.append("    mode: shadow")
        s += ["    alarms:", "      - { window: day, percent: 80 }", "      - { window: month, forecast: true }",
              "      - { anomaly: true }", f"    cost_budget: {{ monthly_usd: {500 + i % 500} }}"]
    return "\n".join(s) + "\n"


def count(template: str):
    text = open(template).read()
    resources = outputs = 0
    section = None
    for line in text.splitlines():
        if re.match(r"^\S", line):
            section = line.rstrip(":")
        elif section in ("Resources", "Outputs") and re.match(r"^  [A-Za-z0-9]+:$", line):
            if section == "Resources":
                resources += 1
            else:
                outputs += 1
    return len(text.encode()), resources, outputs


def main():
    synth, out = sys.argv[1], sys.argv[2]
    results = []
    for apps in (100, 1_000, 10_000):
        path = os.path.join(out, f"scale-{apps}.yaml")
        open(path, "w").write(spec(apps))
        best, peak = None, 0
        for _ in range(3):
            target = os.path.join(out, f"scale-{apps}")
            shutil.rmtree(target, ignore_errors=True)
            run = subprocess.run(["/usr/bin/time", "-f", "%e %M", synth, "render", path, "--out", target],
                                 capture_output=True, text=True, check=True)
            elapsed, rss = run.stderr.strip().splitlines()[-1].split()
            best = float(elapsed) if best is None else min(best, float(elapsed))
            peak = max(peak, int(rss))
        stacks = sorted(f for f in os.listdir(target) if f.endswith(".yaml"))
        sizes = [count(os.path.join(target, f)) for f in stacks]
        largest = max(sizes)
        results.append({
            "applications": apps, "seconds": best, "peak_rss_mb": round(peak / 1024, 1), "stacks": len(stacks),
            "largest_template_bytes": largest[0], "most_resources": max(s[1] for s in sizes),
            "most_outputs": max(s[2] for s in sizes),
        })
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    for r in results:
        r["commit"] = commit
    print(json.dumps(results))


main()
