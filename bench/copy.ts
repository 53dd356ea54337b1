/**
 * Copy benchmark (issue: copy). Measured in one run against the same servers:
 * - tool: `migrate copy` as a whole process, keys/s over the dataset;
 * - raw txn ceiling: the same keys pre-built into full txns, sent straight to
 *   Consul by 8 concurrent clients over keep-alive `node:http` (no etcd read, no planning);
 * - one-PUT-per-key baseline: one client, one `PUT /v1/kv/<key>` per key (what
 *   `consul kv import` does), measured on a sample of the keys (its rate does not
 *   depend on the dataset size).
 * - the floor of any copy: the least a copy can do, in this process (no start-up),
 *   reading etcd's pages with the tool's own reader and sending them as the
 *   ceiling's txns through the same 8 clients, reads overlapped with sends; no
 *   planning, no read of Consul, no checkpoint or lock (`floorVsRawTxn`: how near
 *   this machine lets any copy come to the ceiling).
 * Then the 1,000,000-key copy's peak RSS. The baselines' keys are deleted
 * before the tool runs, so each case writes into a Consul of the same size.
 *
 * The CPU seconds of Consul, etcd, the tool (and this process, `bench`) are
 * reported for the raw ceiling and the tool's run. On a machine with few cores
 * they share them: `cpuBoundVsRawTxn` is the highest `vsRawTxn` the machine
 * allows for the CPU the tool's run used (Consul + etcd + tool CPU seconds spread
 * perfectly over the cores), so a ratio below target says whether the tool or
 * the machine is the limit.
 *
 *   BENCH_KEYS=100000 BENCH_BIG_KEYS=1000000 npm run bench -- copy
 */
import http from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import pLimit from 'p-limit';
import { startConsul, startEtcd } from '../scripts/local-servers.js';
import { ConsulTarget } from '../src/stores/consul.js';
import { EtcdSource } from '../src/stores/etcd.js';
import { prefixRange } from '../src/stores/key-range.js';
import { readAhead } from '../src/stores/read-ahead.js';
import { packTxnBatches, toWireOp, type TargetLimits } from '../src/stores/txn-batcher.js';
import type { TxnOp } from '../src/stores/types.js';
import { cpuBoundSeconds, cpuMeter, loadKeys, report, runMigrate, uniqueId, type CpuUse } from './support.js';

const KEYS = Number(process.env.BENCH_KEYS ?? 100_000);
const BIG_KEYS = Number(process.env.BENCH_BIG_KEYS ?? 1_000_000);
const PUT_SAMPLE = Number(process.env.BENCH_PUT_SAMPLE ?? 10_000);
const VALUE_BYTES = 256;

function send(agent: http.Agent, address: URL, method: string, path: string, body: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request({ hostname: address.hostname, port: address.port, method, path, agent, headers: { 'Content-Length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode} on ${path}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** The floor of any copy (see the module comment): etcd's pages, as the ceiling's txns, 8 clients; returns its ms. */
async function floorCopy(etcdEndpoint: string, agent: http.Agent, address: URL, from: string, to: string, limits: TargetLimits): Promise<number> {
  const source = new EtcdSource({ endpoints: [etcdEndpoint] });
  try {
    const started = performance.now();
    const { revision } = await source.status();
    const limit = pLimit(8);
    const inflight = new Set<Promise<void>>();
    for await (const page of readAhead(source.readPages(prefixRange(Buffer.from(from)), { revision, pageKeys: 10_000 }), 2)) {
      const ops = page.entries.map((e): TxnOp => ({ verb: 'set', key: `${to}/${e.key.toString().slice(from.length)}`, value: e.value }));
      for (const batch of packTxnBatches(ops, limits)) {
        const body = Buffer.from(JSON.stringify(batch.map(toWireOp)));
        while (inflight.size >= 16) await Promise.race(inflight);
        const sent: Promise<void> = limit(() => send(agent, address, 'PUT', '/v1/txn', body)).finally(() => inflight.delete(sent));
        inflight.add(sent);
      }
    }
    await Promise.all(inflight);
    return performance.now() - started;
  } finally {
    source.close();
  }
}

async function copyCase(etcdEndpoint: string, consulAddress: string, id: string, from: string, servers: Record<string, number>): Promise<{ ms: number; maxRssMb: number; cpu: CpuUse }> {
  const meter = cpuMeter(servers);
  const dir = mkdtempSync(join(tmpdir(), 'bench-copy-'));
  writeFileSync(join(dir, 'migration.yaml'), `version: 1\nid: ${id}\nrules:\n  - { name: bulk, from: ${from}, to: ${id}/ }\n`);
  const run = await runMigrate(['copy', '--progress', 'none', '--format', 'json'], { cwd: dir, env: { ETCDCTL_ENDPOINTS: etcdEndpoint, CONSUL_HTTP_ADDR: consulAddress } });
  if (run.code !== 0) throw new Error(`migrate copy exited ${run.code}: ${run.stderr.slice(-2000)}`);
  const result = JSON.parse(run.stdout) as { rules: { created: number }[] };
  if (result.rules[0]!.created === 0) throw new Error('the copy created nothing');
  return { ms: run.ms, maxRssMb: run.maxRssMb, cpu: meter.read({ tool: run.cpuSeconds }) };
}

export async function benchCopy(): Promise<void> {
  const [etcd, consul] = await Promise.all([startEtcd(), startConsul()]);
  const client = new Etcd3({ hosts: etcd.endpoint, grpcOptions: { 'grpc.max_receive_message_length': 512 * 1024 * 1024 } });
  const target = new ConsulTarget({ address: consul.address });
  try {
    const limits = await target.limits();
    const servers = { consul: consul.pid, etcd: etcd.pid };
    // BENCH_KEYS=0 leaves the 100,000-key case out (with BENCH_BIG_KEYS, only the memory case runs).
    if (KEYS > 0) {
      const prefix = '/bench/copy/';
      await loadKeys(client, prefix, KEYS, VALUE_BYTES);
      process.stderr.write(`bench copy: ${KEYS} keys of ${VALUE_BYTES} B in etcd; Consul ${consul.version} (${limits.txnMaxOps} ops per txn)\n`);
      const address = new URL(consul.address);

      // Raw txn ceiling: the same keys (read once, outside the timing) in full txns, 8 concurrent clients.
      const kvs = (await client.getAll().prefix(prefix).exec()).kvs;
      const rawId = uniqueId('raw');
      const ops: TxnOp[] = kvs.map((kv) => ({ verb: 'set', key: `${rawId}/${kv.key.toString().slice(prefix.length)}`, value: kv.value }));
      const bodies = packTxnBatches(ops, limits).map((batch) => Buffer.from(JSON.stringify(batch.map(toWireOp))));
      const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
      const limit = pLimit(8);
      const rawMeter = cpuMeter({ consul: consul.pid });
      let t0 = performance.now();
      await Promise.all(bodies.map((body) => limit(() => send(agent, address, 'PUT', '/v1/txn', body))));
      const rawMs = performance.now() - t0;
      const rawCpu = rawMeter.read();
      const rawKeysPerSec = KEYS / (rawMs / 1000);

      // One PUT per key, one client.
      const putId = uniqueId('put');
      const single = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const sample = kvs.slice(0, PUT_SAMPLE);
      t0 = performance.now();
      for (const kv of sample) await send(single, address, 'PUT', `/v1/kv/${putId}/${kv.key.toString().slice(prefix.length)}`, kv.value);
      const putMs = performance.now() - t0;
      const putKeysPerSec = sample.length / (putMs / 1000);

      // The floor of any copy, into a Consul without the ceiling's keys.
      await send(single, address, 'DELETE', `/v1/kv/${rawId}?recurse`, Buffer.alloc(0));
      const floorId = uniqueId('floor');
      const floorMeter = cpuMeter({ consul: consul.pid, etcd: etcd.pid });
      const floorMs = await floorCopy(etcd.endpoint, agent, address, prefix, floorId, limits);
      const floorCpu = floorMeter.read();
      // Each case writes into a Consul of the same size: its cost per key grows with the store.
      await send(single, address, 'DELETE', `/v1/kv/${floorId}?recurse`, Buffer.alloc(0));
      await send(single, address, 'DELETE', `/v1/kv/${putId}?recurse`, Buffer.alloc(0));
      agent.destroy();
      single.destroy();

      // The tool, whole process.
      const tool = await copyCase(etcd.endpoint, consul.address, uniqueId('tool'), prefix, servers);
      const toolKeysPerSec = KEYS / (tool.ms / 1000);
      report({
        bench: 'copy',
        keys: KEYS,
        valueBytes: VALUE_BYTES,
        consul: consul.version,
        toolKeysPerSec: Math.round(toolKeysPerSec),
        rawTxnKeysPerSec: Math.round(rawKeysPerSec),
        onePutKeysPerSec: Math.round(putKeysPerSec),
        onePutSample: sample.length,
        vsRawTxn: +(toolKeysPerSec / rawKeysPerSec).toFixed(2),
        vsOnePut: +(toolKeysPerSec / putKeysPerSec).toFixed(1),
        targets: { vsRawTxn: 0.8, vsOnePut: 15 },
        cpuBoundVsRawTxn: +(rawMs / 1000 / cpuBoundSeconds(tool.cpu)).toFixed(2),
        floorKeysPerSec: Math.round(KEYS / (floorMs / 1000)),
        floorVsRawTxn: +(rawMs / floorMs).toFixed(2),
        cpu: { rawTxn: rawCpu, floor: floorCpu, tool: tool.cpu },
        toolMaxRssMb: Math.round(tool.maxRssMb),
        command: `BENCH_KEYS=${KEYS} BENCH_BIG_KEYS=0 npm run bench -- copy`,
      });
    }

    if (BIG_KEYS > 0) {
      const bigPrefix = '/bench/copy-big/';
      await loadKeys(client, bigPrefix, BIG_KEYS, VALUE_BYTES);
      const big = await copyCase(etcd.endpoint, consul.address, uniqueId('big'), bigPrefix, servers);
      report({
        bench: 'copy-memory',
        keys: BIG_KEYS,
        valueBytes: VALUE_BYTES,
        toolKeysPerSec: Math.round(BIG_KEYS / (big.ms / 1000)),
        maxRssMb: Math.round(big.maxRssMb),
        target: { maxRssMb: 400 },
        cpu: big.cpu,
        command: `BENCH_KEYS=0 BENCH_BIG_KEYS=${BIG_KEYS} npm run bench -- copy`,
      });
    }
  } finally {
    client.close();
    target.close();
    await Promise.all([etcd.stop(), consul.stop()]);
  }
}
