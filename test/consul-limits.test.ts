import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startConsul, type ConsulServer } from '../scripts/local-servers.js';
import { ConsulTarget } from '../src/stores/consul.js';
import { configDir, rawEtcd, runCli, servers, uniquePrefix } from './support/harness.js';

/**
 * Servers whose operators changed `kv_max_value_size` / `txn_max_req_len`: the
 * tool reads the limits the agent enforces (DebugConfig of /v1/agent/self) and
 * plans by them, unless migration.yaml sets target.limits.
 */
describe('Consul limits set by the operator', () => {
  const etcd = rawEtcd();
  const from = `/${uniquePrefix('limits')}`;
  let lowered: ConsulServer;
  let raised: ConsulServer;

  beforeAll(async () => {
    [lowered, raised] = await Promise.all([
      startConsul({ version: servers().consulVersion, extraHcl: 'limits { kv_max_value_size = 1000, txn_max_req_len = 20000 }' }),
      startConsul({ version: servers().consulVersion, extraHcl: 'limits { kv_max_value_size = 1048576 }' }),
    ]);
    for (let i = 0; i < 200; i++) await etcd.put(`${from}k${String(i).padStart(3, '0')}`).value(Buffer.alloc(900, i));
    // Over the lowered limit only; over Consul's default 512 KiB too.
    await etcd.put(`${from}mid`).value(Buffer.alloc(5_000, 5));
    await etcd.put(`${from}big`).value(Buffer.alloc(600_000, 7));
  });

  afterAll(async () => {
    await Promise.all([lowered?.stop(), raised?.stop()]);
  });

  const run = (consul: ConsulServer, id: string, args: string[], limits = '') =>
    runCli([...args, '--progress', 'none', '--format', 'json'], {
      cwd: configDir(`version: 1\nid: ${id}\n${limits}rules:\n  - { name: a, from: "${from}", to: ${id}/ }\n`),
      env: { ETCDCTL_ENDPOINTS: servers().etcdEndpoint, CONSUL_HTTP_ADDR: consul.address },
    });
  const keysIn = async (consul: ConsulServer, prefix: string) => {
    const target = new ConsulTarget({ address: consul.address });
    try {
      return await target.listKeys(prefix);
    } finally {
      target.close();
    }
  };

  it('reads the limits the agent enforces', async () => {
    const target = new ConsulTarget({ address: lowered.address });
    try {
      expect(await target.limits()).toMatchObject({ txnMaxBytes: 20000, maxValueBytes: 1000 });
    } finally {
      target.close();
    }
  });

  it('doctor warns when migration.yaml sets limits over what the agent enforces', async () => {
    const over = await run(lowered, 'lim-over', ['doctor'], 'target: { limits: { maxValueBytes: 524288, txnMaxBytes: 524288 } }\n');
    const check = (JSON.parse(over.stdout).checks as { name: string; status: string; message: string }[]).find((c) => c.name === 'consul.limits-config');
    expect(check).toEqual(expect.objectContaining({ status: 'warn', message: "target.limits.maxValueBytes 524288 is over the agent's kv_max_value_size 1000; target.limits.txnMaxBytes 524288 is over the 20000 bytes a txn may have on the agent: Consul refuses what the tool plans by them" }));
    const within = await run(lowered, 'lim-within', ['doctor'], 'target: { limits: { maxValueBytes: 1000 } }\n');
    expect((JSON.parse(within.stdout).checks as { name: string }[]).map((c) => c.name)).not.toContain('consul.limits-config');
  });

  it('lowered: audit, dry-run and copy hold back the value over kv_max_value_size and fit txns into txn_max_req_len; verify has parity', async () => {
    const audit = await run(lowered, 'lim-low', ['audit']);
    expect(audit.code).toBe(1);
    const report = JSON.parse(audit.stdout);
    expect(report.limits).toMatchObject({ txnMaxBytes: 20000, maxValueBytes: 1000 });
    expect(report.findings.find((f: { code: string }) => f.code === 'value_too_large')).toMatchObject({ severity: 'blocker', count: 2 });

    const dry = await run(lowered, 'lim-low', ['copy', '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(JSON.parse(dry.stdout).rules[0]).toMatchObject({ created: 200, skipped: { 'value-too-large': 2 } });

    const copy = await run(lowered, 'lim-low', ['copy']);
    expect(copy.code, copy.stderr).toBe(0);
    const done = JSON.parse(copy.stdout);
    expect(done.rules[0]).toMatchObject({ created: 200, skipped: { 'value-too-large': 2 } });
    // 200 values of 900 bytes (1,200 of base64) in bodies of at most 20,000 bytes, none refused and split.
    expect(done.retries).toBe(0);
    expect(done.txns).toBeGreaterThanOrEqual(14);
    expect(await keysIn(lowered, 'lim-low/')).toHaveLength(200);

    const verify = await run(lowered, 'lim-low', ['verify', '--rounds', '1']);
    expect(verify.code, verify.stdout).toBe(0);
    expect(JSON.parse(verify.stdout).totals).toMatchObject({ compared: 200, differences: 0, unmappable: 2 });
  });

  it('plan judges values by the agent\'s limit, as the copy does; with no agent answering, by Consul\'s default, and says so', async () => {
    const low = await run(lowered, 'lim-plan', ['plan']);
    expect(low.code, low.stderr).toBe(1);
    const lowPlan = JSON.parse(low.stdout);
    expect(lowPlan).toMatchObject({ maxValueBytes: 1000, limitsBasis: expect.stringContaining(`at ${lowered.address}`) });
    expect(lowPlan.rules[0]).toMatchObject({ copyKeys: 200 });
    expect(lowPlan.unmappable).toMatchObject({ total: 2, byReason: { 'value-too-large': 2 } });

    const high = await run(raised, 'lim-plan', ['plan']);
    expect(high.code, high.stderr).toBe(0);
    expect(JSON.parse(high.stdout)).toMatchObject({ maxValueBytes: 1048576, rules: [expect.objectContaining({ copyKeys: 202 })] });

    const down = await runCli(['plan', '--progress', 'none'], {
      cwd: configDir(`version: 1\nid: lim-plan\nrules:\n  - { name: a, from: "${from}", to: lim-plan/ }\n`),
      env: { ETCDCTL_ENDPOINTS: servers().etcdEndpoint, CONSUL_HTTP_ADDR: 'http://127.0.0.1:1' },
    });
    expect(down.code, down.stderr).toBe(1);
    expect(down.stdout).toMatch(/Target limits: values up to 512 KiB \(Consul could not be asked \(Consul at http:\/\/127\.0\.0\.1:1 is unreachable/);
    expect(down.stdout).toMatch(/201 keys .* to copy/);
  });

  it('target.limits in migration.yaml wins over what the agent says', async () => {
    const copy = await run(lowered, 'lim-file', ['copy'], 'target:\n  limits: { maxValueBytes: 800 }\n');
    expect(copy.code, copy.stderr).toBe(0);
    expect(JSON.parse(copy.stdout).rules[0]).toMatchObject({ created: 0, skipped: { 'value-too-large': 202 } });
    expect(await keysIn(lowered, 'lim-file/')).toEqual([]);
  });

  it('raised: values of 5 KB and 600 KB (over Consul\'s default limit) are copied and verified', async () => {
    const copy = await run(raised, 'lim-high', ['copy']);
    expect(copy.code, copy.stderr).toBe(0);
    expect(JSON.parse(copy.stdout).rules[0]).toMatchObject({ created: 202, skipped: {} });
    const target = new ConsulTarget({ address: raised.address });
    try {
      expect((await target.readKey('lim-high/big'))?.value.length).toBe(600_000);
    } finally {
      target.close();
    }
    const verify = await run(raised, 'lim-high', ['verify', '--rounds', '1']);
    expect(verify.code, verify.stdout).toBe(0);
    expect(JSON.parse(verify.stdout).totals).toMatchObject({ compared: 202, differences: 0 });
  });
});

/** A server whose operator raised `session_ttl_min` over the 10 s of the tool's sessions (its locks). */
describe('Consul with session_ttl_min over 10 s', () => {
  const etcd = rawEtcd();
  const from = `/${uniquePrefix('ttlmin')}`;
  let consul: ConsulServer;

  beforeAll(async () => {
    consul = await startConsul({ version: servers().consulVersion, extraHcl: 'session_ttl_min = "30s"' });
    await etcd.put(`${from}a`).value('a');
  });

  afterAll(async () => {
    await consul?.stop();
  });

  it('copy and dualrun stop with consul_session_ttl_refused, naming the setting (it said the session expired: run again); nothing is written', async () => {
    const dir = configDir(`version: 1\nid: ttlmin\nrules:\n  - { name: a, from: "${from}", to: ttlmin/ }\n`);
    const env = { ETCDCTL_ENDPOINTS: servers().etcdEndpoint, CONSUL_HTTP_ADDR: consul.address };
    for (const args of [['copy'], ['dualrun', '--baseline']]) {
      const run = await runCli([...args, '--progress', 'none'], { cwd: dir, env });
      expect(run.code, run.stderr).toBe(3);
      expect(run.stderr).toContain('error[consul_session_ttl_refused]: Consul refused the TTL of a session');
      expect(run.stderr).toContain('Set session_ttl_min to 10s or less on the Consul servers');
      expect(run.stderr).not.toContain('consul_session_invalid');
    }
    const target = new ConsulTarget({ address: consul.address });
    try {
      expect(await target.listKeys('ttlmin/')).toEqual([]);
    } finally {
      target.close();
    }
  });
});
