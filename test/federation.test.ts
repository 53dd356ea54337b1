import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startConsulFederation } from '../scripts/local-servers.js';
import { servers } from './support/harness.js';

/**
 * Two Consul datacenters (one server each, not dev mode) federated over the
 * WAN on loopback, reached through dc1's agent only: `?dc=dc2` routes a
 * request to dc2. KV and sessions are per datacenter; a dead remote
 * datacenter fails `?dc=` requests at once while the local one keeps serving;
 * the remote server comes back with its data and the WAN link re-forms.
 */
describe('federation: dc1 and dc2 over the WAN (real servers)', () => {
  let federation: Awaited<ReturnType<typeof startConsulFederation>>;
  /** dc1's agent: every request below goes through it. */
  let dc1: string;
  const key = `fed-${randomBytes(3).toString('hex')}/x`;
  const value = `written-in-dc2-${randomBytes(3).toString('hex')}`;

  beforeAll(async () => {
    const started = Date.now();
    federation = await startConsulFederation({ version: servers().consulVersion });
    dc1 = federation.member('dc1').address;
    process.stderr.write(`federation: Consul ${federation.version} ${federation.datacenters.join('+')} up and federated in ${Date.now() - started} ms\n`);
  }, 120_000);
  afterAll(async () => {
    await federation?.stop();
  });

  async function call(method: string, path: string, body?: unknown): Promise<{ status: number; text: string; ms: number }> {
    const started = Date.now();
    const res = await fetch(`${dc1}${path}`, { method, ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }), signal: AbortSignal.timeout(30_000) });
    const text = await res.text();
    return { status: res.status, text, ms: Date.now() - started };
  }

  it('the members are the datacenters: named after them, with their node names', () => {
    expect(federation.datacenters).toEqual(['dc1', 'dc2']);
    expect(federation.members.map((m) => m.name)).toEqual(['dc1', 'dc2']);
    for (const m of federation.members) expect(m.node).toBe(`${m.name}-${new URL(m.address).port}`);
    expect(federation.member('dc2')).toBe(federation.members[1]);
  });

  it('KV is per datacenter: a key written with ?dc=dc2 through dc1 reads back in dc2 and is absent in dc1', async () => {
    expect(await call('GET', '/v1/catalog/datacenters')).toMatchObject({ status: 200 });
    expect(JSON.parse((await call('GET', '/v1/catalog/datacenters')).text)).toEqual(expect.arrayContaining(['dc1', 'dc2']));
    expect(await call('PUT', `/v1/kv/${key}?dc=dc2`, value)).toMatchObject({ status: 200, text: 'true' });
    expect(await call('GET', `/v1/kv/${key}?dc=dc2&raw`)).toMatchObject({ status: 200, text: value });
    expect((await call('GET', `/v1/kv/${key}`)).status).toBe(404);
    // dc2's own agent has it too.
    const direct = await fetch(`${federation.member('dc2').address}/v1/kv/${key}?raw`);
    expect(await direct.text()).toBe(value);
  });

  it('a session with no node checks is created in dc2 through dc1 (NodeChecks: [] and the older Checks: [] both work) and is listed in dc2 only', async () => {
    const dc2Node = federation.member('dc2').node!;
    const ids: string[] = [];
    for (const noChecks of [{ NodeChecks: [] }, { Checks: [] }]) {
      const created = await call('PUT', '/v1/session/create?dc=dc2', { Node: dc2Node, ...noChecks, TTL: '15s', Behavior: 'delete', LockDelay: '0s' });
      expect(created.status, created.text).toBe(200);
      const id = (JSON.parse(created.text) as { ID: string }).ID;
      ids.push(id);
      const [info] = JSON.parse((await call('GET', `/v1/session/info/${id}?dc=dc2`)).text) as { Node: string; NodeChecks: string[] | null; Checks?: string[] | null; Behavior: string; TTL: string }[];
      expect(info).toMatchObject({ Node: dc2Node, NodeChecks: [], Behavior: 'delete', TTL: '15s' });
      expect(info!.Checks ?? []).toEqual([]);
    }
    const listed = (JSON.parse((await call('GET', '/v1/session/list?dc=dc2')).text) as { ID: string }[]).map((s) => s.ID);
    expect(listed).toEqual(expect.arrayContaining(ids));
    const inDc1 = (JSON.parse((await call('GET', '/v1/session/list')).text) as { ID: string }[]).map((s) => s.ID);
    for (const id of ids) expect(inDc1).not.toContain(id);
    // Without a Node the agent names its own (dc1's) node, which dc2's catalog does not hold.
    const noNode = await call('PUT', '/v1/session/create?dc=dc2', { NodeChecks: [], TTL: '15s', Behavior: 'delete', LockDelay: '0s' });
    expect(noNode.status).toBe(500);
    expect(noNode.text).toContain('Missing node registration');
    // Without either field the session takes dc2's node serfHealth check.
    const defaulted = await call('PUT', '/v1/session/create?dc=dc2', { Node: dc2Node, TTL: '15s', Behavior: 'delete', LockDelay: '0s' });
    const [defaultedInfo] = JSON.parse((await call('GET', `/v1/session/info/${(JSON.parse(defaulted.text) as { ID: string }).ID}?dc=dc2`)).text) as { NodeChecks: string[] }[];
    expect(defaultedInfo!.NodeChecks).toEqual(['serfHealth']);
  });

  it('dc2 dies: ?dc=dc2 requests fail at once with a 500 while dc1 serves its own KV; dc2 comes back with its data', async () => {
    await federation.member('dc2').kill();
    const failures: { status: number; text: string; ms: number }[] = [];
    for (let i = 0; i < 3; i++) {
      failures.push(await call('GET', `/v1/kv/${key}?dc=dc2`));
      await new Promise((r) => setTimeout(r, 500));
    }
    const unknownDc = await call('GET', `/v1/kv/${key}?dc=nowhere`);
    const wan = JSON.parse((await call('GET', '/v1/agent/members?wan=1')).text) as { Name: string; Status: number }[];
    process.stderr.write(`federation: Consul ${federation.version} with dc2 dead: ${failures.map((f) => `${f.status} ${JSON.stringify(f.text.trim())} in ${f.ms} ms`).join('; ')}; unknown dc: ${unknownDc.status} ${JSON.stringify(unknownDc.text.trim())}; dc1 still lists ${(await call('GET', '/v1/catalog/datacenters')).text}; WAN members ${JSON.stringify(wan.map((m) => [m.Name, m.Status]))}\n`);
    for (const f of failures) {
      expect(f.status).toBe(500);
      // The first request can meet the pooled connection being closed (stream closed, EOF, broken pipe); later ones find the port refused.
      expect(f.text).toMatch(/stream closed|EOF|broken pipe|connection re(fused|set)|No path to datacenter/);
      expect(f.ms).toBeLessThan(5000);
    }
    expect(failures.at(-1)!.text).toMatch(/connection refused/);
    expect(unknownDc).toMatchObject({ status: 500, text: 'No path to datacenter' });
    // dc1 is unaffected.
    expect(await call('PUT', `/v1/kv/${key}`, 'dc1-value')).toMatchObject({ status: 200, text: 'true' });
    expect(await call('GET', `/v1/kv/${key}?raw`)).toMatchObject({ status: 200, text: 'dc1-value' });

    const restarted = Date.now();
    await federation.member('dc2').restart();
    const up = Date.now() - restarted;
    await federation.federated();
    process.stderr.write(`federation: Consul ${federation.version} dc2 restarted in ${up} ms, federated again ${Date.now() - restarted} ms after the restart began\n`);
    expect(await call('GET', `/v1/kv/${key}?dc=dc2&raw`)).toMatchObject({ status: 200, text: value });
    expect(await call('GET', `/v1/kv/${key}?raw`)).toMatchObject({ status: 200, text: 'dc1-value' });
  }, 90_000);
});
