/**
 * Dual-run benchmark (issue: dual-run). Against real servers started here:
 * 1. lag: a writer drives etcd at BENCH_RATE single-key writes/s (default 2,000)
 *    plus one 50-key transaction per second for BENCH_DUALRUN_SECONDS (default
 *    60); 20 times a second a probe key carries a sequence number, and the
 *    benchmark's own watcher (blocking GETs on that key in Consul) times each
 *    one from etcd's commit to visible in Consul: p50/p99/max. The dual-run runs
 *    with --heartbeat-key, and its own end-to-end figure is sampled alongside.
 * 2. sustained: single-key writes only, from several writer processes (one etcd
 *    client tops out at about 3-4.5k puts/s, so one writer per 1,500/s), stepped
 *    up by BENCH_STEP (default 2,000/s) for BENCH_STEP_SECONDS each (default 15)
 *    until a step fails; lag = etcd's current revision − the dual-run's
 *    checkpoint, sampled every second. A step holds when the writers reached 95%
 *    of its rate and the lag at its end (mean of the last 3 samples) is no more
 *    than at its start (mean of samples 2-4) plus one second of writes; one
 *    step halfway between the last that held and the first that failed
 *    narrows it. The highest step that held is then run again for BENCH_DUALRUN_SECONDS (default
 *    60): if that holds too, it is the highest rate sustained for that long;
 *    if not, the step below it is tried once.
 *    Each step reports the cores that etcd, Consul, the dual-run, the writers
 *    and this process kept busy meanwhile (CPU seconds over the step's wall time):
 *    on a small machine their sum reaching its core count is the limit.
 * 3. drain: a backlog written while the dual-run is stopped, applied after a
 *    restart (apply capacity with no writer in the way).
 *
 *   npm run bench -- dualrun
 *   BENCH_DUALRUN_SECONDS=20 npm run bench -- dualrun   (shorter)
 */
import http from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { Etcd3 } from 'etcd3';
import { freePort, repoRoot, startConsul, startEtcd } from '../scripts/local-servers.js';
import { EtcdSource } from '../src/stores/etcd.js';
import { prefixRange } from '../src/stores/key-range.js';
import { cpuMeter, report, uniqueId } from './support.js';

const RATE = Number(process.env.BENCH_RATE ?? 2000);
const SECONDS = Number(process.env.BENCH_DUALRUN_SECONDS ?? process.env.BENCH_SECONDS ?? 60);
const STEP = Number(process.env.BENCH_STEP ?? 2000);
const STEP_SECONDS = Math.min(SECONDS, Number(process.env.BENCH_STEP_SECONDS ?? 15));
const MAX_RATE = Number(process.env.BENCH_MAX_RATE ?? 30_000);
const PER_WRITER = 1500;

function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : NaN;
}

function getJson(url: string): Promise<{ status: number; index: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, index: Number(res.headers['x-consul-index'] ?? 0), body }));
    }).on('error', reject);
  });
}

/** Writes `rate` single-key puts per second (plus `txnPerSecond` 50-key txns) until `stop()`. */
function startWriter(client: Etcd3, prefix: string, rate: number, txnPerSecond: number): { stop: () => Promise<number> } {
  let running = true;
  let writes = 0;
  const started = Date.now();
  const inflightMax = 128;
  let inflight = 0;
  const loop = (async () => {
    let lastTxn = Date.now();
    while (running) {
      const due = Math.floor(((Date.now() - started) / 1000) * rate);
      while (writes < due && inflight < inflightMax && running) {
        inflight++;
        const i = writes++;
        void client.put(`${prefix}k${i % 5000}`).value(`v${i}`).then(() => inflight--, () => inflight--);
      }
      if (txnPerSecond > 0 && Date.now() - lastTxn >= 1000 / txnPerSecond) {
        lastTxn = Date.now();
        const puts = Array.from({ length: 50 }, (_, j) => client.put(`${prefix}txn/${j}`).value(`t${writes}`));
        void client.if(`${prefix}txn/0`, 'Mod', '>', -1).then(...puts).commit();
      }
      await new Promise((r) => setTimeout(r, 2));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      while (inflight > 0) await new Promise((r) => setTimeout(r, 10));
      return writes / ((Date.now() - started) / 1000);
    },
  };
}

async function metricValue(port: number, name: string): Promise<number> {
  const text = await new Promise<string>((resolve, reject) => http.get(`http://127.0.0.1:${port}/metrics`, (res) => {
    let body = '';
    res.on('data', (c) => (body += c));
    res.on('end', () => resolve(body));
  }).on('error', reject));
  return Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
}

/** Revisions etcd holds that the dual-run's checkpoint has not reached (etcd's own count, not the dual-run's view of it). */
async function lagRevisions(client: Etcd3, port: number): Promise<number> {
  const [status, checkpoint] = await Promise.all([client.maintenance.status(), metricValue(port, 'migrate_dualrun_checkpoint_revision')]);
  return Math.max(0, Number(status.header.revision) - checkpoint);
}

/** `count` writer processes sharing `rate` single-key puts/s, once all are connected; `stop()` returns the acknowledged puts/s. */
async function startWriters(endpoint: string, prefix: string, rate: number, count: number): Promise<{ pids: number[]; stop: () => Promise<number> }> {
  const children = Array.from({ length: count }, () => {
    const child = spawn(process.execPath, [join(repoRoot, 'bench', 'etcd-writer.mjs'), endpoint, prefix, String(rate / count), '5000'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    let markReady: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => (markReady = resolve));
    child.stdout!.on('data', (c: Buffer) => {
      out += c;
      if (out.startsWith('ready\n')) markReady();
    });
    const done = new Promise<{ acked: number; seconds: number }>((resolve) => child.once('exit', () => {
      markReady();
      const last = out.trim().split('\n').at(-1) ?? '';
      resolve(last.startsWith('{') ? JSON.parse(last) : { acked: 0, seconds: 1 });
    }));
    return { child, ready, done };
  });
  await Promise.all(children.map((c) => c.ready));
  return {
    pids: children.map((c) => c.child.pid!),
    async stop() {
      for (const c of children) c.child.kill('SIGTERM');
      const results = await Promise.all(children.map((c) => c.done));
      return results.reduce((n, r) => n + r.acked / r.seconds, 0);
    },
  };
}

interface Step {
  rate: number;
  seconds: number;
  writers: number;
  achievedWritesPerSec: number;
  appliedEventsPerSec: number;
  lagRevisionsStart: number;
  lagRevisionsEnd: number;
  lagRevisionsMax: number;
  held: boolean;
  /** Cores kept busy on average during the step, per process (writers summed), and the machine's core count. */
  busyCores: Record<string, number>;
  cores: number;
}

/** One step of the sustained search: writers at `rate` for `seconds`, lag sampled every second. */
async function runStep(client: Etcd3, endpoint: string, port: number, rate: number, seconds: number, processes: Record<string, number>): Promise<Step> {
  // Start from a caught-up dual-run, so a step does not inherit the last one's backlog.
  for (let i = 0; i < 300 && (await lagRevisions(client, port)) > 10; i++) await new Promise((r) => setTimeout(r, 200));
  const writers = Math.max(2, Math.ceil(rate / PER_WRITER));
  const load = await startWriters(endpoint, '/bench/dr/s/', rate, writers);
  const checkpointStart = await metricValue(port, 'migrate_dualrun_checkpoint_revision');
  const meter = cpuMeter({ ...processes, ...Object.fromEntries(load.pids.map((pid, i) => [`writer${i}`, pid])) });
  const t0 = performance.now();
  const samples: number[] = [];
  for (let i = 0; i < seconds; i++) {
    await new Promise((r) => setTimeout(r, 1000));
    samples.push(await lagRevisions(client, port));
  }
  const checkpointEnd = await metricValue(port, 'migrate_dualrun_checkpoint_revision');
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = meter.read();
  const achieved = await load.stop();
  const busyCores: Record<string, number> = {};
  for (const [name, cpuSeconds] of Object.entries(cpu.seconds)) {
    const key = name.startsWith('writer') ? 'writers' : name;
    busyCores[key] = +((busyCores[key] ?? 0) + cpuSeconds / cpu.wallSeconds).toFixed(2);
  }
  busyCores.total = cpu.busyCores;
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  // The first second is the writers starting up; the start is samples 2-4.
  const lagStart = Math.round(mean(samples.slice(1, 4)));
  const lagEnd = Math.round(mean(samples.slice(-3)));
  return {
    rate, seconds, writers,
    achievedWritesPerSec: Math.round(achieved),
    appliedEventsPerSec: Math.round((checkpointEnd - checkpointStart) / elapsed),
    lagRevisionsStart: lagStart, lagRevisionsEnd: lagEnd, lagRevisionsMax: Math.max(...samples),
    held: achieved >= rate * 0.95 && lagEnd <= lagStart + rate,
    busyCores,
    cores: cpu.cores,
  };
}

export async function benchDualRun(): Promise<void> {
  const [etcd, consul] = await Promise.all([startEtcd(), startConsul()]);
  const client = new Etcd3({ hosts: etcd.endpoint });
  const id = uniqueId('dr');
  const dir = mkdtempSync(join(tmpdir(), 'bench-dr-'));
  writeFileSync(join(dir, 'migration.yaml'), `version: 1\nid: ${id}\nrules:\n  - { name: app, from: /bench/dr/, to: ${id}/ }\n`);
  const env = { PATH: process.env.PATH ?? '', CI: 'true', ETCDCTL_ENDPOINTS: etcd.endpoint, CONSUL_HTTP_ADDR: consul.address };
  const port = await freePort();
  let child: ReturnType<typeof spawn> | undefined;
  try {
    await client.put('/bench/dr/seed').value('0');
    const copy = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'copy', '--progress', 'none'], { cwd: dir, env, stdio: 'ignore' });
    await new Promise((r) => copy.on('exit', r));
    child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'dualrun', '--metrics-addr', `127.0.0.1:${port}`, '--heartbeat-key', '/bench/heartbeat'], { cwd: dir, env, stdio: 'ignore' });
    for (let i = 0; i < 100; i++) {
      const ok = await getJson(`http://127.0.0.1:${port}/healthz`).then((r) => r.status === 200, () => false);
      if (ok) break;
      await new Promise((r) => setTimeout(r, 100));
    }

    // 1. Lag under the issue's load.
    const samples: number[] = [];
    const committedAt = new Map<number, number>();
    let watching = true;
    const watcher = (async () => {
      let index = 0;
      while (watching) {
        const res = await getJson(`${consul.address}/v1/kv/${id}/probe?index=${index}&wait=2s`);
        const seenAt = performance.now();
        index = res.index > index ? res.index : 0;
        if (res.status !== 200) continue;
        const seq = Number(Buffer.from((JSON.parse(res.body) as { Value: string }[])[0]!.Value, 'base64').toString());
        for (const [s, at] of committedAt) {
          if (s <= seq) {
            samples.push(seenAt - at);
            committedAt.delete(s);
          }
        }
      }
    })();
    const heartbeatLags: number[] = [];
    const heartbeatSampler = setInterval(() => void metricValue(port, 'migrate_dualrun_heartbeat_lag_seconds').then((v) => Number.isFinite(v) && heartbeatLags.push(v * 1000), () => undefined), 1000);
    const writer = startWriter(client, '/bench/dr/', RATE, 1);
    const probeEnd = Date.now() + SECONDS * 1000;
    for (let seq = 1; Date.now() < probeEnd; seq++) {
      await client.put('/bench/dr/probe').value(String(seq));
      committedAt.set(seq, performance.now());
      await new Promise((r) => setTimeout(r, 50));
    }
    const achieved = await writer.stop();
    clearInterval(heartbeatSampler);
    const heartbeatSorted = heartbeatLags.sort((a, b) => a - b);
    await new Promise((r) => setTimeout(r, 3000));
    watching = false;
    await watcher;
    const sorted = samples.sort((a, b) => a - b);
    report({
      bench: 'dualrun-lag',
      seconds: SECONDS,
      targetRate: RATE,
      achievedWritesPerSec: Math.round(achieved),
      txnsOf50PerSec: 1,
      samples: sorted.length,
      unseen: committedAt.size,
      lagMs: { p50: Math.round(percentile(sorted, 50)), p99: Math.round(percentile(sorted, 99)), max: Math.round(sorted.at(-1) ?? NaN) },
      target: { p99Ms: 250 },
      heartbeatLagMs: { note: 'the dual-run\'s own migrate_dualrun_heartbeat_lag_seconds, sampled once a second', samples: heartbeatSorted.length, p50: Math.round(percentile(heartbeatSorted, 50)), max: Math.round(heartbeatSorted.at(-1) ?? NaN) },
      command: `BENCH_RATE=${RATE} BENCH_DUALRUN_SECONDS=${SECONDS} npm run bench -- dualrun`,
    });

    // 2. Highest sustained single-key rate: step up until a step fails, then confirm the best for SECONDS.
    const processes = { etcd: etcd.pid, consul: consul.pid, dualrun: child.pid! };
    const steps: Step[] = [];
    for (let rate = STEP; rate <= MAX_RATE; rate += STEP) {
      const step = await runStep(client, etcd.endpoint, port, rate, STEP_SECONDS, processes);
      steps.push(step);
      report({ bench: 'dualrun-step', ...step });
      if (!step.held) break;
    }
    // One step between the last that held and the first that failed narrows the figure.
    const between = Math.round((steps.at(-1)!.rate - STEP / 2) / 500) * 500;
    if (!steps.at(-1)!.held && steps.length > 1 && between > steps.at(-2)!.rate) {
      const step = await runStep(client, etcd.endpoint, port, between, STEP_SECONDS, processes);
      steps.splice(steps.length - 1, 0, step);
      report({ bench: 'dualrun-step', ...step });
    }
    const held = steps.filter((s) => s.held).map((s) => s.rate).sort((x, y) => x - y);
    let sustained = 0;
    let confirm: Step | undefined;
    for (const rate of [held.at(-1), held.at(-2)]) {
      if (!rate) break;
      confirm = await runStep(client, etcd.endpoint, port, rate, SECONDS, processes);
      report({ bench: 'dualrun-confirm', ...confirm });
      if (confirm.held) {
        sustained = rate;
        break;
      }
    }
    const failed = steps.find((s) => !s.held);
    report({
      bench: 'dualrun-max-sustained',
      eventsPerSec: sustained,
      seconds: SECONDS,
      limitedBy: failed
        ? `${failed.achievedWritesPerSec < failed.rate * 0.95 ? `the writers (${failed.achievedWritesPerSec}/s of ${failed.rate}/s asked)` : `the dual-run (lag grew from ${failed.lagRevisionsStart} to ${failed.lagRevisionsEnd} revisions at ${failed.rate}/s; it applied ${failed.appliedEventsPerSec}/s)`}; ${failed.busyCores.total} of the machine's ${failed.cores} cores were busy (${Object.entries(failed.busyCores).filter(([k]) => k !== 'total').map(([k, v]) => `${k} ${v}`).join(', ')})`
        : `BENCH_MAX_RATE ${MAX_RATE}`,
      target: { eventsPerSec: 10_000 },
      command: `BENCH_STEP=${STEP} BENCH_STEP_SECONDS=${STEP_SECONDS} BENCH_DUALRUN_SECONDS=${SECONDS} npm run bench -- dualrun`,
    });

    // 3. Apply capacity without the writer as the limit: a backlog of single-key
    //    revisions written while the dual-run is stopped, drained after restart.
    child.kill('SIGTERM');
    await new Promise((r) => child!.once('exit', r));
    const backlog = Number(process.env.BENCH_BACKLOG ?? 150_000);
    const fill = await startWriters(etcd.endpoint, '/bench/dr/s/', 20_000, 6);
    const target = Number((await client.maintenance.status()).header.revision) + backlog;
    while (Number((await client.maintenance.status()).header.revision) < target) await new Promise((r) => setTimeout(r, 200));
    const fillRate = await fill.stop();
    const last = Number((await client.maintenance.status()).header.revision);
    const from = JSON.parse(Buffer.from((JSON.parse((await getJson(`${consul.address}/v1/kv/_migrate/${id}/checkpoint`)).body) as { Value: string }[])[0]!.Value, 'base64').toString()).revision as number;
    const t0 = performance.now();
    child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'dualrun'], { cwd: dir, env, stdio: 'ignore' });
    for (;;) {
      const res = await getJson(`${consul.address}/v1/kv/_migrate/${id}/checkpoint`);
      const at = JSON.parse(Buffer.from((JSON.parse(res.body) as { Value: string }[])[0]!.Value, 'base64').toString()).revision as number;
      if (at >= last) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const seconds = (performance.now() - t0) / 1000;
    // Baseline: the same backlog through a bare etcd watch, nothing applied. A watch that catches up
    // gets at most 1,000 revisions per pass of etcd's unsynced-watcher loop (watchBatchMaxRevs).
    const bare = new EtcdSource({ endpoints: [etcd.endpoint] });
    const w0 = performance.now();
    const watch = await bare.watch(prefixRange('/bench/dr/'), from + 1);
    for await (const message of watch) if (message.revision >= last) break;
    await watch.close();
    bare.close();
    const watchSeconds = (performance.now() - w0) / 1000;
    const drainRate = (last - from) / seconds;
    const watchRate = (last - from) / watchSeconds;
    report({
      bench: 'dualrun-drain', revisions: last - from, seconds: +seconds.toFixed(1), eventsPerSec: Math.round(drainRate), target: { eventsPerSec: 10_000 },
      bareWatchEventsPerSec: Math.round(watchRate), ratioToBareWatch: +(drainRate / watchRate).toFixed(2), writersPerSec: Math.round(fillRate),
      note: 'single-key revisions written while the dual-run was stopped (by 6 writer processes), then drained (includes process start); the baseline reads the same backlog through a bare etcd watch, which bounds any catch-up',
      command: `BENCH_BACKLOG=${backlog} npm run bench -- dualrun`,
    });
  } finally {
    child?.kill('SIGTERM');
    client.close();
    await new Promise((r) => setTimeout(r, 500));
    await Promise.all([etcd.stop(), consul.stop()]);
  }
}
