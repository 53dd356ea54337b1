/**
 * Verify benchmark (issue: verify). For each dataset size, in one run against
 * the same servers, after `migrate copy` has copied the keys:
 * - raw read ceiling: the slower of
 *   - etcd: the prefix read with `etcd3` in pinned-revision pages (the tool's page size);
 *   - Consul: `?keys` for the prefix, then the values in read-only txns of
 *     the tool's chunks (whole sub-prefixes of about 1,000 keys, `planReads`),
 *     8 in flight over keep-alive `node:http`;
 *   (the two run one after the other: the ceiling of reading both sides is at
 *   least the slower one);
 * - tool: `migrate verify` as a whole process (a clean copy: one round), keys/s
 *   over the dataset and its peak RSS.
 * The machines are shared and noisy: the ceiling and the tool are measured in
 * turn BENCH_REPEAT times (default 3); the ratio is of the medians, and every
 * sample is in the result.
 * Targets: tool ≥ 0.5 × the ceiling; peak RSS < 400 MB at 1,000,000 keys.
 *
 * The CPU seconds of etcd, Consul, the tool (and this process, `bench`) are
 * reported for each read: the ceiling reads one server with the machine to
 * itself, the tool reads both at once on the same cores. `cpuBoundVsCeiling` is
 * the highest `vsCeiling` the machine allows for the CPU the tool's run used
 * (etcd + Consul + tool CPU seconds spread perfectly over the cores).
 *
 *   BENCH_KEYS=100000 BENCH_BIG_KEYS=1000000 npm run bench -- verify
 */
import http from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import pLimit from 'p-limit';
import { startConsul, startEtcd } from '../scripts/local-servers.js';
import { ConsulTarget } from '../src/stores/consul.js';
import { packReads, planReads, readLimits, readTxnBody } from '../src/stores/consul-reads.js';
import { prefixEnd } from '../src/stores/key-range.js';
import { cpuBoundSeconds, cpuMeter, loadKeys, report, runMigrate, uniqueId, type ChildRun, type CpuUse } from './support.js';

const KEYS = Number(process.env.BENCH_KEYS ?? 100_000);
const BIG_KEYS = Number(process.env.BENCH_BIG_KEYS ?? 1_000_000);
/** Measurements of the ceiling and of the tool, in turn, per case (BENCH_REPEAT, default 3): the figures are their medians. */
const REPEAT = Math.max(1, Number(process.env.BENCH_REPEAT ?? 3));
const VALUE_BYTES = 256;
/** The tool's default `--page-keys`, so both read etcd in the same pages. */
const PAGE_KEYS = 10_000;

function request(agent: http.Agent, address: URL, method: string, path: string, body?: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ hostname: address.hostname, port: address.port, method, path, agent, headers: { 'Content-Length': body?.length ?? 0 } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(chunks)) : reject(new Error(`HTTP ${res.statusCode} on ${path}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** One side of the ceiling: how long it took, and the keys it read. */
interface Read {
  ms: number;
  keys: number;
}

/** etcd side of the ceiling: every key and value of `prefix` in pinned-revision pages. */
async function readEtcd(client: Etcd3, prefix: string): Promise<Read> {
  const t0 = performance.now();
  let start = Buffer.from(prefix);
  const end = prefixEnd(Buffer.from(prefix));
  let revision = '0';
  let keys = 0;
  for (;;) {
    const res = await client.kv.range({ key: start, range_end: end, limit: PAGE_KEYS, revision });
    if (revision === '0') revision = res.header.revision;
    keys += res.kvs.length;
    if (!res.more || res.kvs.length === 0) break;
    start = Buffer.concat([res.kvs.at(-1)!.key, Buffer.from([0])]);
  }
  return { ms: performance.now() - t0, keys };
}

/** Consul side of the ceiling: the key list, then every value in the tool's txn chunks, 8 in flight. */
async function readConsul(address: URL, prefix: string, opsPerTxn: number): Promise<Read> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  const t0 = performance.now();
  const list = JSON.parse((await request(agent, address, 'GET', `/v1/kv/${prefix}?keys&consistent`)).toString('utf8')) as string[];
  const limit = pLimit(8);
  let keys = 0;
  const bodies: Buffer[] = [];
  // The tool knows each value's size from etcd; these are all VALUE_BYTES.
  const limits = readLimits(opsPerTxn);
  for (const txn of packReads(planReads(list, { listed: list, valueBytes: list.map(() => VALUE_BYTES) }, limits), opsPerTxn, limits)) bodies.push(Buffer.from(readTxnBody(txn)));
  await Promise.all(bodies.map((body) => limit(async () => {
    const parsed = JSON.parse((await request(agent, address, 'PUT', '/v1/txn?consistent', body)).toString('utf8')) as { Results: unknown[] };
    keys += parsed.Results.length;
  })));
  agent.destroy();
  return { ms: performance.now() - t0, keys };
}

async function benchCase(label: string, keys: number, etcdEndpoint: string, consulAddress: string, client: Etcd3, opsPerTxn: number, servers: Record<string, number>): Promise<void> {
  const id = uniqueId(`verify-${label}`);
  const from = `/bench/${id}/`;
  await loadKeys(client, from, keys, VALUE_BYTES);
  const dir = mkdtempSync(join(tmpdir(), 'bench-verify-'));
  writeFileSync(join(dir, 'migration.yaml'), `version: 1\nid: ${id}\nrules:\n  - { name: bulk, from: ${from}, to: ${id}/ }\n`);
  const env = { ETCDCTL_ENDPOINTS: etcdEndpoint, CONSUL_HTTP_ADDR: consulAddress };
  const copied = await runMigrate(['copy', '--progress', 'none'], { cwd: dir, env });
  if (copied.code !== 0) throw new Error(`migrate copy exited ${copied.code}: ${copied.stderr.slice(-2000)}`);
  process.stderr.write(`bench verify: ${keys} keys copied in ${(copied.ms / 1000).toFixed(1)} s\n`);

  // The machine is shared: the ceiling and the tool are measured in turn, REPEAT times, and compared by their medians.
  const samples: { etcdRead: Read; consulRead: Read; ceilingMs: number; tool: ChildRun; toolCpu: CpuUse; etcdReadCpu: CpuUse; consulReadCpu: CpuUse }[] = [];
  for (let i = 0; i < REPEAT; i++) {
    let meter = cpuMeter(servers);
    const etcdRead = await readEtcd(client, from);
    const etcdReadCpu = meter.read();
    meter = cpuMeter(servers);
    const consulRead = await readConsul(new URL(consulAddress), `${id}/`, opsPerTxn);
    const consulReadCpu = meter.read();
    if (etcdRead.keys !== keys || consulRead.keys !== keys) throw new Error(`the ceiling read ${etcdRead.keys} etcd / ${consulRead.keys} Consul keys, expected ${keys}`);

    meter = cpuMeter(servers);
    const tool = await runMigrate(['verify', '--progress', 'none', '--format', 'json', '--no-record'], { cwd: dir, env });
    const toolCpu = meter.read({ tool: tool.cpuSeconds });
    if (tool.code !== 0) throw new Error(`migrate verify exited ${tool.code}: ${tool.stderr.slice(-2000)}`);
    const result = JSON.parse(tool.stdout) as { clean: boolean; totals: { compared: number } };
    if (!result.clean || result.totals.compared !== keys) throw new Error(`verify compared ${result.totals.compared} keys (clean: ${result.clean}), expected ${keys} at parity`);
    samples.push({ etcdRead, consulRead, ceilingMs: Math.max(etcdRead.ms, consulRead.ms), tool, toolCpu, etcdReadCpu, consulReadCpu });
  }
  const ceilingMs = median(samples.map((s) => s.ceilingMs));
  // The run whose time is the median, for its CPU figures.
  const run = [...samples].sort((x, y) => x.tool.ms - y.tool.ms)[samples.length >> 1]!;
  const toolKeysPerSec = keys / (run.tool.ms / 1000);
  const ceilingKeysPerSec = keys / (ceilingMs / 1000);
  report({
    bench: 'verify',
    keys,
    valueBytes: VALUE_BYTES,
    repeats: REPEAT,
    toolKeysPerSec: Math.round(toolKeysPerSec),
    toolSeconds: +(run.tool.ms / 1000).toFixed(2),
    ceilingKeysPerSec: Math.round(ceilingKeysPerSec),
    etcdReadKeysPerSec: Math.round(keys / (median(samples.map((s) => s.etcdRead.ms)) / 1000)),
    consulReadKeysPerSec: Math.round(keys / (median(samples.map((s) => s.consulRead.ms)) / 1000)),
    vsCeiling: +(toolKeysPerSec / ceilingKeysPerSec).toFixed(2),
    maxRssMb: Math.round(Math.max(...samples.map((s) => s.tool.maxRssMb))),
    targets: { vsCeiling: 0.5, maxRssMb: 400 },
    cpuBoundVsCeiling: +(ceilingMs / 1000 / cpuBoundSeconds(run.toolCpu)).toFixed(2),
    cpu: { etcdRead: run.etcdReadCpu, consulRead: run.consulReadCpu, tool: run.toolCpu },
    samples: samples.map((s) => ({ toolSeconds: +(s.tool.ms / 1000).toFixed(2), ceilingSeconds: +(s.ceilingMs / 1000).toFixed(2) })),
    command: `BENCH_KEYS=${label === 'big' ? 0 : keys} BENCH_BIG_KEYS=${label === 'big' ? keys : 0} npm run bench -- verify`,
  });
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[sorted.length >> 1]!;
}

export async function benchVerify(): Promise<void> {
  const [etcd, consul] = await Promise.all([startEtcd(), startConsul()]);
  const client = new Etcd3({ hosts: etcd.endpoint, grpcOptions: { 'grpc.max_receive_message_length': 512 * 1024 * 1024 } });
  const target = new ConsulTarget({ address: consul.address });
  try {
    const { txnMaxOps } = await target.limits();
    process.stderr.write(`bench verify: Consul ${consul.version} (${txnMaxOps} ops per txn)\n`);
    const servers = { etcd: etcd.pid, consul: consul.pid };
    if (KEYS > 0) await benchCase('small', KEYS, etcd.endpoint, consul.address, client, txnMaxOps, servers);
    if (BIG_KEYS > 0) await benchCase('big', BIG_KEYS, etcd.endpoint, consul.address, client, txnMaxOps, servers);
  } finally {
    client.close();
    target.close();
    await Promise.all([etcd.stop(), consul.stop()]);
  }
}
