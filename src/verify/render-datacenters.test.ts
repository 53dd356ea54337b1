import { Ajv } from 'ajv';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { createValueHasher } from '../report/hash.js';
import { consulErrorFor } from '../stores/consul-http.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import { VERIFY_DATACENTERS_REPORT_SCHEMA } from './report-schema.js';
import { datacentersVerdict, renderVerifyDatacenters, type DatacenterVerify } from './render.js';
import { runVerify, type VerifyOptions } from './verify.js';

const loaded = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/, to: app/, datacenters: [dc1, dc2, dc3] }\n', 'migration.yaml');

function options(): VerifyOptions {
  let t = Date.parse('2025-03-01T12:00:00Z');
  return {
    rounds: 1, roundPauseMs: 0, waitTimeoutMs: 1000, maxDiffs: 100, budgets: {}, record: false, readBack: 0, pageKeys: 10,
    signal: new AbortController().signal, hasher: createValueHasher(Buffer.alloc(32, 1)), toolVersion: 'test',
    now: () => new Date(t), sleep: async (ms) => void (t += ms),
  };
}

/** etcd with /app/a and /app/b; a datacenter's Consul with what `keys` says. */
async function verifyIn(datacenter: string, source: MemorySource, keys: Record<string, string>) {
  const target = new MemoryTarget();
  for (const [key, value] of Object.entries(keys)) target.entries.set(key, { key, value: Buffer.from(value), flags: 0, modifyIndex: 5 });
  return runVerify({ source, target, config: loaded.config, mapping: loaded.mapping, datacenter }, options());
}

const validate = new Ajv({ allErrors: true, strict: true }).compile(VERIFY_DATACENTERS_REPORT_SCHEMA);

describe('verify over several datacenters', () => {
  async function entries(): Promise<DatacenterVerify[]> {
    const source = new MemorySource();
    source.put('/app/a', 'A');
    source.put('/app/b', 'B');
    return [
      { datacenter: 'dc1', result: await verifyIn('dc1', source, { 'app/a': 'A', 'app/b': 'B' }) },
      { datacenter: 'dc2', result: await verifyIn('dc2', source, { 'app/a': 'A', 'app/b': 'X' }) },
      { datacenter: 'dc3', error: consulErrorFor('http://127.0.0.1:8500', 'GET', '/v1/kv/app/', 500, Buffer.from('rpc error getting client: failed to get conn: dial tcp 127.0.0.1:0->127.0.0.1:8300: connect: connection refused'), 'dc3') },
    ];
  }

  it('JSON: one entry per datacenter, every difference names its datacenter, the unreachable one is unverified (schema-valid)', async () => {
    const doc = JSON.parse(renderVerifyDatacenters('demo', await entries(), 'json'));
    if (!validate(doc)) throw new Error(JSON.stringify(validate.errors, null, 2));
    expect(doc.status).toBe('drift');
    expect(doc.clean).toBe(false);
    expect(doc.datacenters.map((d: { datacenter: string; status: string }) => [d.datacenter, d.status])).toEqual([['dc1', 'parity'], ['dc2', 'drift'], ['dc3', 'unverified']]);
    expect(doc.datacenters[1].report.differences).toEqual([expect.objectContaining({ datacenter: 'dc2', kind: 'value', key: 'app/b' })]);
    expect(doc.datacenters[2]).toMatchObject({ report: null, error: { code: 'consul_datacenter_unreachable' } });
    expect(doc.datacenters[2].error.message).toContain('datacenter dc3');
  });

  it('JUnit: a suite per datacenter, differences name it, the unreachable one is an error, never a pass', async () => {
    const xml = renderVerifyDatacenters('demo', await entries(), 'junit');
    expect(XMLValidator.validate(xml)).toBe(true);
    const doc = new XMLParser({ ignoreAttributes: false, isArray: (name) => name === 'testsuite' || name === 'testcase' }).parse(xml);
    expect(doc.testsuites['@_errors']).toBe('1');
    expect(doc.testsuites['@_failures']).toBe('1');
    const suites = doc.testsuites.testsuite as { '@_name': string; testcase: { '@_classname': string; failure?: { '#text': string }; error?: { '@_type': string } }[] }[];
    expect(suites.map((s) => s['@_name'])).toEqual(['migrate verify demo (datacenter dc1)', 'migrate verify demo (datacenter dc2)', 'migrate verify demo (datacenter dc3)']);
    expect(suites[1]!.testcase[0]!.failure!['#text']).toContain('value app/b in datacenter dc2');
    expect(suites[2]!.testcase[0]!.error!['@_type']).toBe('consul_datacenter_unreachable');
  });

  it('text and markdown say which datacenter is not verified; the verdict ranks drift over unverified over parity', async () => {
    const all = await entries();
    const text = renderVerifyDatacenters('demo', all, 'text');
    expect(text).toContain('Datacenter dc3: NOT VERIFIED: error[consul_datacenter_unreachable]');
    expect(text).toContain('Result: DRIFT in datacenter dc2; not verified: dc3 (exit 1).');
    expect(renderVerifyDatacenters('demo', all, 'markdown')).toContain('## migrate verify, datacenter `dc3`: ⚠️ not verified');
    expect(datacentersVerdict(all)).toBe('drift');
    expect(datacentersVerdict([all[0]!, all[2]!])).toBe('unverified');
    expect(renderVerifyDatacenters('demo', [all[0]!, all[2]!], 'text')).toContain('NOT VERIFIED: datacenter dc3 could not be verified; parity in dc1 (exit 3).');
    expect(datacentersVerdict([all[0]!])).toBe('ok');
  });
});

describe('a datacenter that does not answer', () => {
  it('is told apart from an overloaded Consul, and retried', () => {
    const dead = consulErrorFor('http://a', 'PUT', '/v1/txn', 500, Buffer.from('rpc error making call: stream closed'), 'dc2');
    expect(dead.code).toBe('consul_datacenter_unreachable');
    expect(dead.exitCode).toBe(3);
    expect((dead as { retryable?: boolean }).retryable).toBe(true);
    expect(consulErrorFor('http://a', 'GET', '/v1/kv/x', 500, Buffer.from('No path to datacenter'), 'dc9').message).toContain('no path to datacenter dc9');
    // Without ?dc= the same text is the agent's own trouble.
    expect(consulErrorFor('http://a', 'GET', '/v1/kv/x', 500, Buffer.from('rpc error making call: stream closed')).code).toBe('consul_unavailable');
  });
});
