# Scoring a month (issue 7): 10,000 and 100,000 meters (0.3 and 3 million
# meter-days of collection records), time and peak memory of `score_month`, and how
# both grow with the fleet (should be about linear: 10x meters -> about 10x).
# The floor is reading the same collection.csv with the csv module and nothing
# else, measured in the same run. Each measurement runs in its own process so the
# peak RSS is its own; an import-only process gives the baseline memory.
import csv
import json
import pathlib
import random
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MONTH = "2026-11"
DAYS = 30
CARRIER_USERS = 18      # users per carrier collector (one collector a day is within the 15-20 quota)
WIRELESS_METERS = 2     # meters per wireless collector
WIRELESS_PER_DAY = 6    # collectors a wireless person maintains a day (quota 5-8)
WORK_DAYS = 25


def generate(root, meters, seed=1):
    """A month's data directory for `meters` meters: 70 % on carrier collectors, 30 % on
    wireless ones, every collector maintained once, 10 % of meters rotated in
    orders of 50, 5 % installed in batch orders of 40, collection for every meter-day."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    n_carrier = meters * 7 // 10
    collectors = []  # (collector, kind, [meters])
    for c in range(n_carrier // CARRIER_USERS):
        collectors.append(("C%06d" % c, "carrier", ["M%07d" % m for m in range(c * CARRIER_USERS,
                                                                               (c + 1) * CARRIER_USERS)]))
    start = (n_carrier // CARRIER_USERS) * CARRIER_USERS
    for w, m0 in enumerate(range(start, meters - WIRELESS_METERS + 1, WIRELESS_METERS)):
        collectors.append(("W%06d" % w, "wireless", ["M%07d" % m for m in range(m0, m0 + WIRELESS_METERS)]))
    meter_ids = [m for _, _, ms in collectors for m in ms]
    people, jobs = [], []
    wireless = [c for c in collectors if c[1] == "wireless"]
    carrier = [c for c in collectors if c[1] == "carrier"]
    slot = 0
    for i in range(0, len(wireless), WIRELESS_PER_DAY):
        person, day = "PW%04d" % (slot // WORK_DAYS), slot % WORK_DAYS + 1
        jobs += [(person, day, c) for c in wireless[i:i + WIRELESS_PER_DAY]]
        slot += 1
    slot = 0
    for c in carrier:
        jobs.append(("PC%04d" % (slot // WORK_DAYS), slot % WORK_DAYS + 1, c))
        slot += 1
    people = sorted({p for p, _, _ in jobs})
    with open(root / "crew.csv", "w") as f:
        f.write("person,name,crew\n")
        f.writelines("%s,Installer %s,crew%02d\n" % (p, p, i % 20) for i, p in enumerate(people))
    with open(root / "maintenance.csv", "w") as f:
        f.write("job,person,day,kind,collector\n")
        f.writelines("J%d,%s,%s-%02d,%s,%s\n" % (i, p, MONTH, d, c[1], c[0]) for i, (p, d, c) in enumerate(jobs))
    rotated = meter_ids[: meters // 10]
    batch = meter_ids[meters // 10: meters // 10 + meters // 20]
    with open(root / "orders.csv", "w") as fo, open(root / "order_meters.csv", "w") as fm, \
            open(root / "spot_checks.csv", "w") as fs:
        fo.write("order,kind,person,deadline,completed\n")
        fm.write("order,meter,person,load_class\n")
        fs.write("order,meter,item,result,inspector,day\n")
        for n, i in enumerate(range(0, len(rotated), 50)):
            oid, done = "R%05d" % n, rng.randint(5, 28)
            fo.write("%s,rotation,%s,%s-%02d,%s-%02d\n" % (oid, people[n % len(people)], MONTH, rng.randint(3, done),
                                                           MONTH, done))
            for j, m in enumerate(rotated[i:i + 50]):
                fm.write("%s,%s,,\n" % (oid, m))
                if j % 7 == 0:
                    fs.write("%s,%s,screws_tight,%s,T01,%s-29\n" % (oid, m, "pass" if rng.random() < .99 else "fail",
                                                                   MONTH))
        for n, i in enumerate(range(0, len(batch), 40)):
            oid = "B%05d" % n
            fo.write("%s,batch,%s,,%s-%02d\n" % (oid, people[n % len(people)], MONTH, rng.randint(5, 28)))
            fm.writelines("%s,%s,,%s\n" % (oid, m, "2" if j % 10 == 0 else "3") for j, m in enumerate(batch[i:i + 40]))
    with open(root / "collection.csv", "w") as f:
        f.write("meter,collector,day,collected\n")
        owner = {m: c for c, _, ms in collectors for m in ms}
        for d in range(1, DAYS + 1):
            day = "%s-%02d" % (MONTH, d)
            bits = rng.getrandbits(len(meter_ids))
            f.writelines("%s,%s,%s,%s\n" % (m, owner[m], day, "no" if (bits >> k) & 15 == 0 else "yes")
                         for k, m in enumerate(meter_ids))
    return len(meter_ids) * DAYS, len(jobs), len(people)


def _peak_rss_kb():
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss
    over fork and exec, so a child of a large `python -m bench` reported its parent's peak."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(mode, data):
    """Run in a fresh process: one measurement, printed as JSON."""
    t0 = time.perf_counter()
    if mode == "score":
        from metergate.scoring import inputs, month, rules

        r = rules.load()
        rep = month.score_month(inputs.load(data, r), r, MONTH)
        out = {"days": len(rep.days), "orders": len(rep.orders), "records": rep.collection_rows}
    elif mode == "floor":
        with open(pathlib.Path(data) / "collection.csv", newline="") as f:
            out = {"records": sum(1 for _ in csv.reader(f)) - 1}
    else:  # baseline: the imports only
        from metergate.scoring import inputs, month, rules  # noqa: F401

        out = {}
    out["seconds"] = time.perf_counter() - t0
    out["maxrss_kb"] = _peak_rss_kb()
    print(json.dumps(out))


def _measure(mode, data):
    res = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); "
                          "from bench import scoring_bench as b; b.child(%r, %r)" % (str(ROOT), mode, str(data))],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(sizes=(10_000, 100_000)):
    base = _measure("baseline", ROOT)
    results = {}
    with tempfile.TemporaryDirectory(prefix="metergate-scoring-bench-") as tmp:
        for n in sizes:
            data = pathlib.Path(tmp) / str(n)
            t0 = time.perf_counter()
            meter_days, jobs, people = generate(data, n)
            gen = time.perf_counter() - t0
            size_mb = (data / "collection.csv").stat().st_size / 1e6
            score = _measure("score", data)
            floor = _measure("floor", data)
            assert score["records"] == meter_days == floor["records"], (score, floor, meter_days)
            mem = (score["maxrss_kb"] - base["maxrss_kb"]) / 1024
            results[n] = (score["seconds"], mem)
            print("%7d meters, %d meter-days (collection.csv %.0f MB, generated in %.1f s), %d jobs by %d people,"
                  " %d person-days, %d orders:" % (n, meter_days, size_mb, gen, jobs, people, score["days"],
                                                   score["orders"]))
            print("   score_month %.2f s (%.2f us per meter-day), peak RSS %.1f MB above the %.1f MB baseline;"
                  " floor (csv.reader alone) %.2f s: %.1fx the floor"
                  % (score["seconds"], score["seconds"] / meter_days * 1e6, mem, base["maxrss_kb"] / 1024,
                     floor["seconds"], score["seconds"] / floor["seconds"]), flush=True)
            shutil_rmtree(data)
    if len(sizes) == 2:
        (a, b) = sizes
        ta, ma = results[a]
        tb, mb = results[b]
        print("growth %dx meters: time x%.1f, memory x%.1f (linear would be x%.0f)"
              % (b // a, tb / ta, mb / ma if ma > 0 else float("nan"), b / a))


def shutil_rmtree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    run()
