/**
 * Dual-run benchmark (issue: dual-run). Against real servers started here:
 * 1. lag: a writer drives etcd at BENCH_RATE single-key writes/s (default 2,000)
 *    plus one 50-key transaction per second for BENCH_SECONDS (default 60);
 *    20 times a second a probe key carries a sequence number, and the
 *    benchmark's own watcher (blocking GETs on that key in Consul) times each
 *    one from etcd's commit to visible in Consul: p50/p99/max.
 * 2. sustained: single-key writes only, at rising rates (BENCH_STAGES, default
 *    5000,10000,15000 events/s) for BENCH_STAGE_SECONDS each (default 60); a
 *    stage is sustained when the writer reached its rate and the lag at the end
 *    is no larger than at the start plus one second of writes.
 *
 *   npm run bench -- dualrun
 */
import http from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { Etcd3 } from 'etcd3';
import { freePort, repoRoot, startConsul, startEtcd } from '../scripts/local-servers.js';
import { report, uniqueId } from './support.js';

const RATE = Number(process.env.BENCH_RATE ?? 2000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 60);
const STAGES = (process.env.BENCH_STAGES ?? '5000,10000,15000').split(',').map(Number).filter((n) => n > 0);
const STAGE_SECONDS = Number(process.env.BENCH_STAGE_SECONDS ?? 60);

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

async function lagMetric(port: number): Promise<number> {
  const text = await new Promise<string>((resolve, reject) => http.get(`http://127.0.0.1:${port}/metrics`, (res) => {
    let body = '';
    res.on('data', (c) => (body += c));
    res.on('end', () => resolve(body));
  }).on('error', reject));
  return Number(/^migrate_dualrun_lag_revisions (\S+)$/m.exec(text)?.[1] ?? NaN);
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
    child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'dualrun', '--metrics-addr', `127.0.0.1:${port}`], { cwd: dir, env, stdio: 'ignore' });
    for (let i = 0; i < 100; i++) {
      const ok = await getJson(`http://127.0.0.1:${port}/healthz`).then((r) => r.status === 200, () => false);
      if (ok) break;
      await new Promise((r) => setTimeout(r, 100));
    }

    // 1. Lag under the load.
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
    const writer = startWriter(client, '/bench/dr/', RATE, 1);
    const probeEnd = Date.now() + SECONDS * 1000;
    for (let seq = 1; Date.now() < probeEnd; seq++) {
      await client.put('/bench/dr/probe').value(String(seq));
      committedAt.set(seq, performance.now());
      await new Promise((r) => setTimeout(r, 50));
    }
    const achieved = await writer.stop();
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
      command: `BENCH_RATE=${RATE} BENCH_SECONDS=${SECONDS} npm run bench -- dualrun`,
    });

    // 2. Highest sustained single-key rate.
    let sustained = 0;
    for (const rate of STAGES) {
      const lagStart = await lagMetric(port);
      const stage = startWriter(client, '/bench/dr/', rate, 0);
      await new Promise((r) => setTimeout(r, STAGE_SECONDS * 1000));
      const lagEnd = await lagMetric(port);
      const got = await stage.stop();
      const ok = got >= rate * 0.95 && lagEnd <= lagStart + rate;
      report({ bench: 'dualrun-sustained', rate, seconds: STAGE_SECONDS, achievedWritesPerSec: Math.round(got), lagRevisionsStart: lagStart, lagRevisionsEnd: lagEnd, sustained: ok });
      if (!ok) break;
      sustained = rate;
      for (let i = 0; i < 100 && (await lagMetric(port)) > 0; i++) await new Promise((r) => setTimeout(r, 200));
    }
    report({ bench: 'dualrun-max-sustained', eventsPerSec: sustained, target: { eventsPerSec: 10_000 }, command: `BENCH_STAGES=${STAGES.join(',')} BENCH_STAGE_SECONDS=${STAGE_SECONDS} npm run bench -- dualrun` });

    // 3. Apply capacity without the writer as the limit: a backlog of single-key
    //    revisions written while the dual-run is stopped, drained after restart.
    child.kill('SIGTERM');
    await new Promise((r) => child!.once('exit', r));
    const backlog = Number(process.env.BENCH_BACKLOG ?? 150_000);
    const fill = startWriter(client, '/bench/dr/', 1_000_000, 0);
    const target = Number((await client.maintenance.status()).header.revision) + backlog;
    while (Number((await client.maintenance.status()).header.revision) < target) await new Promise((r) => setTimeout(r, 200));
    await fill.stop();
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
    report({ bench: 'dualrun-drain', revisions: last - from, seconds: +seconds.toFixed(1), eventsPerSec: Math.round((last - from) / seconds), target: { eventsPerSec: 10_000 }, note: 'single-key revisions written while the dual-run was stopped, then drained; includes process start', command: `BENCH_BACKLOG=${backlog} npm run bench -- dualrun` });
  } finally {
    child?.kill('SIGTERM');
    client.close();
    await new Promise((r) => setTimeout(r, 500));
    await Promise.all([etcd.stop(), consul.stop()]);
  }
}
