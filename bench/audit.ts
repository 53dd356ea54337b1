/**
 * Audit benchmark (issue 3). Measured in one run against the same etcd:
 * - raw read ceiling: every key read in pinned-revision pages of 5,000 with
 *   the `etcd3` client and nothing else (best of two passes);
 * - the audit as an in-process service call (`runAudit`), keys/s and its
 *   ratio to the ceiling (target ≥ 0.5);
 * - `migrate audit` as a whole process, with its peak RSS (target < 300 MB);
 * - the same CLI over keys that each have their own revision (single puts),
 *   which exercises the revision-group counter's spill to disk.
 *
 *   npm run bench -- audit                       (1,000,000 keys of 100 bytes)
 *   BENCH_KEYS=100000 npm run bench -- audit      (a quick run)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import pLimit from 'p-limit';
import { startEtcd } from '../scripts/local-servers.js';
import { runAudit } from '../src/audit/audit.js';
import { emptyConfig } from '../src/config/load.js';
import { EtcdSource } from '../src/stores/etcd.js';
import { loadKeys, report, runMigrate } from './support.js';

const KEYS = Number(process.env.BENCH_KEYS ?? 1_000_000);
const DISTINCT_KEYS = Number(process.env.BENCH_DISTINCT_KEYS ?? Math.min(200_000, KEYS));
const VALUE_BYTES = 100;
const PAGE_KEYS = 5000;

/** The ceiling: pinned-revision pages over the whole keyspace, nothing done with them. */
async function rawRead(client: Etcd3, revision: number): Promise<{ keys: number; ms: number }> {
  const started = performance.now();
  let start = Buffer.from([0]);
  const end = Buffer.from([0]);
  let keys = 0;
  for (;;) {
    const response = await client.kv.range({ key: start, range_end: end, limit: PAGE_KEYS, revision });
    keys += response.kvs.length;
    if (!response.more || response.kvs.length === 0) break;
    start = Buffer.concat([response.kvs[response.kvs.length - 1]!.key, Buffer.from([0])]);
  }
  return { keys, ms: performance.now() - started };
}

async function loadDistinct(client: Etcd3, prefix: string, count: number): Promise<void> {
  const limit = pLimit(64);
  const value = Buffer.alloc(VALUE_BYTES, 0x61);
  await Promise.all(Array.from({ length: count }, (_, i) => limit(() => client.put(`${prefix}${String(i).padStart(8, '0')}`).value(value).exec())));
}

export async function benchAudit(): Promise<void> {
  const etcd = await startEtcd();
  const client = new Etcd3({ hosts: etcd.endpoint, grpcOptions: { 'grpc.max_receive_message_length': 512 * 1024 * 1024 } });
  const cwd = mkdtempSync(join(tmpdir(), 'bench-audit-'));
  const env = { ETCDCTL_ENDPOINTS: etcd.endpoint, CONSUL_HTTP_ADDR: 'http://127.0.0.1:9' };
  try {
    const loadStarted = performance.now();
    await loadKeys(client, '/bench/audit/', KEYS, VALUE_BYTES);
    process.stderr.write(`bench audit: loaded ${KEYS} keys of ${VALUE_BYTES} B in ${((performance.now() - loadStarted) / 1000).toFixed(1)} s (1,000 per txn)\n`);
    const revision = Number((await client.maintenance.status()).header.revision);

    const rawA = await rawRead(client, revision);
    const source = new EtcdSource({ endpoints: [etcd.endpoint] });
    const auditStarted = performance.now();
    const result = await runAudit({ source, config: emptyConfig(), pageKeys: PAGE_KEYS });
    const auditMs = performance.now() - auditStarted;
    source.close();
    const rawB = await rawRead(client, revision);
    const raw = rawA.ms <= rawB.ms ? rawA : rawB;
    if (raw.keys !== KEYS || result.totals.keys !== KEYS) throw new Error(`read ${raw.keys} (raw) and ${result.totals.keys} (audit) keys, expected ${KEYS}`);
    const rawRate = (raw.keys / raw.ms) * 1000;
    const auditRate = (KEYS / auditMs) * 1000;
    const command = `BENCH_KEYS=${KEYS} npm run bench -- audit`;
    report({ bench: 'audit', case: 'raw-read-ceiling', keys: raw.keys, pageKeys: PAGE_KEYS, seconds: round(raw.ms / 1000), keysPerSecond: Math.round(rawRate), command });
    report({ bench: 'audit', case: 'audit-in-process', keys: KEYS, seconds: round(auditMs / 1000), keysPerSecond: Math.round(auditRate), ratioToRaw: round(auditRate / rawRate), target: '>= 0.5', command });

    const cli = await runMigrate(['audit', '--format', 'json', '--progress', 'none'], { cwd, env });
    if (cli.code !== 0 && cli.code !== 1) throw new Error(`migrate audit exited ${cli.code}: ${cli.stderr.slice(-2000)}`);
    const cliResult = JSON.parse(cli.stdout) as { totals: { keys: number }; scan: { keysPerSecond: number } };
    report({ bench: 'audit', case: 'audit-cli', keys: cliResult.totals.keys, seconds: round(cli.ms / 1000), scanKeysPerSecond: cliResult.scan.keysPerSecond, maxRssMb: round(cli.maxRssMb), target: '< 300 MB', command });

    if (DISTINCT_KEYS > 0) {
      const loadDistinctStarted = performance.now();
      await loadDistinct(client, '/bench/distinct/', DISTINCT_KEYS);
      process.stderr.write(`bench audit: loaded ${DISTINCT_KEYS} keys with one revision each in ${((performance.now() - loadDistinctStarted) / 1000).toFixed(1)} s\n`);
      const distinct = await runMigrate(['audit', '--prefix', '/bench/distinct/', '--format', 'json', '--progress', 'none'], { cwd, env });
      if (distinct.code !== 0 && distinct.code !== 1) throw new Error(`migrate audit exited ${distinct.code}: ${distinct.stderr.slice(-2000)}`);
      const d = JSON.parse(distinct.stdout) as { totals: { keys: number }; scan: { keysPerSecond: number; spilledRuns: number }; atomicGroups: { revisions: number } };
      report({ bench: 'audit', case: 'audit-cli-distinct-revisions', keys: d.totals.keys, revisions: d.atomicGroups.revisions, spilledRuns: d.scan.spilledRuns, seconds: round(distinct.ms / 1000), scanKeysPerSecond: d.scan.keysPerSecond, maxRssMb: round(distinct.maxRssMb), command: `BENCH_KEYS=${KEYS} BENCH_DISTINCT_KEYS=${DISTINCT_KEYS} npm run bench -- audit` });
    }
  } finally {
    client.close();
    rmSync(cwd, { recursive: true, force: true });
    await etcd.stop();
  }
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
