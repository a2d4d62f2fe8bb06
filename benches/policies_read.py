"""Reads the snapshots benches/policies.sh takes, and prints its report.

    policies_read.py KIND NAME SNAPSHOT_A SNAPSHOT_B   # one JSON line
    policies_read.py --report JSON SECONDS < lines      # the table, or JSON

A snapshot is webui's /json on its first line, then the `worker_` series of
webui's /metrics (every worker of `up` together).
"""

import json
import math
import re
import sys

SERIES = re.compile(r'^(\w+)\{([^}]*)\} (\S+)')
GENERATE = 'rpc_method="dockercoins.v1.Rng/Generate"'


def parse(snapshot):
    lines = snapshot.splitlines()
    page = json.loads(lines[0])
    series = []
    for line in lines[1:]:
        match = SERIES.match(line)
        if match:
            series.append((match[1], match[2], float(match[3])))
    return page, series


def total(series, name, *labels):
    return sum(v for n, l, v in series if n == name and all(x in l for x in labels))


def generate_buckets(series):
    """Rng/Generate whole calls, every status: upper bound -> count."""
    buckets = {}
    for name, labels, value in series:
        if name == 'worker_grpc_client_call_duration_seconds_bucket' and GENERATE in labels:
            le = re.search(r'le="([^"]+)"', labels)[1]
            bound = math.inf if le == '+Inf' else float(le)
            buckets[bound] = buckets.get(bound, 0) + value
    return buckets


def quantile(q, a, b):
    """histogram_quantile over the calls between two snapshots."""
    before, after = generate_buckets(a), generate_buckets(b)
    bounds = sorted(after)
    counts = [after[x] - before.get(x, 0) for x in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return None


def measure(kind, name, a_text, b_text):
    (a_page, a), (b_page, b) = parse(a_text), parse(b_text)
    seconds = b_page['now'] - a_page['now']
    calls = total(b, 'worker_grpc_client_call_duration_seconds_count', GENERATE) - total(
        a, 'worker_grpc_client_call_duration_seconds_count', GENERATE)
    failed = sum(
        total(b, 'worker_grpc_client_call_duration_seconds_count', status)
        - total(a, 'worker_grpc_client_call_duration_seconds_count', status)
        for status in {l for n, l, _ in b if 'rpc_response_status_code=' in l and 'status_code="OK"' not in l})
    p99 = quantile(0.99, a, b)
    return {
        'kind': kind,
        'name': name,
        'seconds': round(seconds, 1),
        'hashes_per_second': round((b_page['hashes'] - a_page['hashes']) / seconds, 2),
        'rng_calls': int(calls),
        'p99_ms': None if p99 is None else round(p99 * 1000),
        'hedges': int(total(b, 'worker_rpc_client_hedges_total') - total(a, 'worker_rpc_client_hedges_total')),
        'retries': int(total(b, 'worker_rpc_client_retries_total') - total(a, 'worker_rpc_client_retries_total')),
        'failed_calls': int(failed),
    }


def report(as_json, seconds):
    rows = [json.loads(line) for line in sys.stdin if line.strip()]
    if as_json == 'true':
        print(json.dumps({'seconds': int(seconds), 'runs': rows}, indent=2))
        return
    print('### Policies: 10 workers, 3 rng replicas, the last slowed to 300 ms a call\n')
    print('| policy | hashes/s | workers\' p99 of Rng/Generate | failed calls (rng and hasher) |')
    print('|---|---:|---:|---:|')
    by = {r['name']: r for r in rows if r['kind'] == 'policy'}
    for r in by.values():
        print(f"| {r['name']} | {r['hashes_per_second']:.2f} | {r['p99_ms']} ms | {r['failed_calls']} |")
    if 'round_robin' in by and 'least_request' in by and by['round_robin']['hashes_per_second']:
        ratio = by['least_request']['hashes_per_second'] / by['round_robin']['hashes_per_second']
        print(f'\nleast_request / round_robin: {ratio:.2f}x hashes/s')
    for kind, title in [('capacity', "classroom workers (100 ms pause before each unit)"),
                        ('capacity-nopause', "workers without their pause")]:
        by = {r['name']: r for r in rows if r['kind'] == kind}
        if not by:
            continue
        print(f'\n### Capacities: 3 rng replicas of 1, 1 and 3 lanes, 10 {title}\n')
        print('| policy | hashes/s | vs round_robin | workers\' p99 of Rng/Generate | failed calls |')
        print('|---|---:|---:|---:|---:|')
        base = by.get('round_robin', {}).get('hashes_per_second') or None
        for r in by.values():
            ratio = f"{r['hashes_per_second'] / base:.2f}x" if base else '-'
            print(f"| {r['name']} | {r['hashes_per_second']:.2f} | {ratio} | {r['p99_ms']} ms | {r['failed_calls']} |")
    print('\n### Hedging: 3 rng replicas without a lane, the last +1 s on 10% of its calls\n')
    print('| hedging | hashes/s | workers\' p99 of Rng/Generate | rng calls | hedges (extra load) |')
    print('|---|---:|---:|---:|---:|')
    for r in rows:
        if r['kind'] == 'hedging':
            share = 100 * r['hedges'] / max(r['rng_calls'], 1)
            print(f"| {r['name']} | {r['hashes_per_second']:.2f} | {r['p99_ms']} ms | {r['rng_calls']} | {r['hedges']} ({share:.1f}%) |")
    for r in rows:
        if r['kind'] == 'restart':
            print('\n### Rolling restart under load: 3 rng and 2 hasher replicas, one at a time (SIGHUP to up)\n')
            print(f"took {r['name']}; failed calls (rng and hasher), each a unit of work lost: {r['failed_calls']}; "
                  f"retries: {r['retries']}; hashes/s meanwhile: {r['hashes_per_second']:.2f}")
    print(f'\n(each measure {seconds} s after 5 s of warm-up, 12 s under weighted_round_robin; benches/policies.sh)')


if __name__ == '__main__':
    if sys.argv[1] == '--report':
        report(sys.argv[2], sys.argv[3])
    else:
        print(json.dumps(measure(*sys.argv[1:5])))
