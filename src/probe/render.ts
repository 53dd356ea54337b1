import type { LatencyReport, LatencySummary } from './latency.js';

/** Renders a latency probe report as text or markdown (pure). */

const ms = (n: number) => `${n.toFixed(n < 10 ? 2 : 1)} ms`;
const signed = (n: number) => `${n >= 0 ? '+' : '−'}${ms(Math.abs(n))}`;

function row(name: string, s: LatencySummary, write: LatencySummary): string[] {
  return [name, ms(s.p50Ms), ms(s.p99Ms), ms(s.maxMs), ms(s.meanMs), ms(write.p50Ms)];
}

function header(r: LatencyReport): string {
  return `${r.samples} sample(s), ${r.intervalMs} ms apart; Consul blocking queries with wait=${r.waitSeconds}s on a scratch folder, etcd watch on a scratch key`;
}

export function renderLatencyText(r: LatencyReport): string {
  const rows = [
    ['', 'p50', 'p99', 'max', 'mean', 'write p50'],
    row('etcd watch', r.etcd.notify, r.etcd.write),
    row('Consul blocking query', r.consul.notify, r.consul.write),
    ['Consul − etcd', signed(r.difference.p50Ms), signed(r.difference.p99Ms), signed(r.difference.maxMs), '', ''],
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((line) => line[c]!.length)));
  const table = rows.map((line) => line.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ').trimEnd());
  return [
    `Watch latency: ${header(r)}.`,
    'Time from just before the write until the watcher saw the change (write p50: until the write was acknowledged).',
    '',
    ...table,
    '',
    `Consul blocking queries woke ${r.consul.emptyWakeups} time(s) without the change (the folder's index moved for another reason, or wait expired).`,
    'Scratch keys only; both were deleted. `--format markdown` explains what this means for applications that move from watch to blocking queries.',
  ].join('\n');
}

export function renderLatencyMarkdown(r: LatencyReport): string {
  const line = (name: string, s: LatencySummary, write: LatencySummary) => `| ${name} | ${ms(s.p50Ms)} | ${ms(s.p99Ms)} | ${ms(s.maxMs)} | ${ms(s.meanMs)} | ${ms(write.p50Ms)} |`;
  return [
    '## Watch latency: etcd watch vs Consul blocking query',
    '',
    `${header(r)}. Each figure is the time from just before the write until the watcher saw the change; "write p50" is until the write was acknowledged.`,
    '',
    '| watcher | p50 | p99 | max | mean | write p50 |',
    '|---|---:|---:|---:|---:|---:|',
    line('etcd watch', r.etcd.notify, r.etcd.write),
    line('Consul blocking query', r.consul.notify, r.consul.write),
    `| Consul − etcd | ${signed(r.difference.p50Ms)} | ${signed(r.difference.p99Ms)} | ${signed(r.difference.maxMs)} | | |`,
    '',
    `Consul blocking queries woke **${r.consul.emptyWakeups}** time(s) without the change.`,
    '',
    '### What this means for applications that move from etcd watch to Consul blocking queries',
    '',
    '- **A blocking query is long polling, not a stream.** The application sends `?index=<last X-Consul-Index>&wait=<d>` and gets an answer when anything under the path changes or `wait` expires, then must ask again. Changes made between two polls arrive together: the application sees the latest state, **not every intermediate value** (an etcd watch delivers every revision). Code that counts or replays events must be rewritten to reconcile state.',
    '- **Whole-prefix results.** A blocking query on a prefix returns every key under it each time (etcd sends only the changed keys with their previous values when asked). Keep watched prefixes small, or watch single keys, and diff on the client.',
    '- **Wake-ups without a change** (counted above) happen when the index moves for a key the application does not care about, or when `wait` expires. The application must compare what it got with what it had. Consul\'s index can also go backwards (a snapshot restore, a new leader): reset it to 0 when it does.',
    '- **Latency.** The difference in the table is what a watcher in this environment waits in addition after cutover. Consul adds a small random jitter to `wait` (up to wait/16), and followers can answer stale reads unless `?consistent` is used.',
    '- **Rate.** Each blocking query holds an HTTP connection; a tight loop on a busy prefix costs a full read per change. Libraries usually add a minimum interval between polls (rate limiting), which adds latency the probe does not include.',
    '',
    'The probe wrote and deleted scratch keys only (etcd and Consul, under the migration\'s state prefix).',
  ].join('\n');
}
