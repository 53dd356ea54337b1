import { describe, expect, it } from 'vitest';
import { MemoryTarget } from '../stores/memory.js';
import { parseConfig } from '../config/load.js';
import { checkIdentity, ensureMeta, mappingHash, parseStateDocument, readState, statePaths, STATE_SCHEMA_VERSION, type StateMeta } from './state.js';
import type { MigrateError } from '../errors.js';

const current = { id: 'demo', etcdClusterId: '111', datacenter: 'dc1', mappingHash: 'aaaa' };
const meta = (over: Partial<StateMeta> = {}): StateMeta => ({ schemaVersion: 1, id: 'demo', etcdClusterId: '111', datacenters: ['dc1'], mappingHash: 'aaaa', created: '2026-01-01T00:00:00.000Z', toolVersion: '0.1.0', ...over });

async function rejection(p: Promise<unknown>): Promise<MigrateError> {
  try {
    await p;
  } catch (err) {
    return err as MigrateError;
  }
  throw new Error('expected a rejection');
}

describe('state layout', () => {
  it('keeps everything under <prefix><id>/', () => {
    const p = statePaths('_migrate/', 'shop');
    expect([p.meta, p.copy, p.checkpoint(), p.checkpoint('dc2'), p.leader, p.session('7587869'), p.rule('billing'), p.verifyLast]).toEqual([
      '_migrate/shop/meta', '_migrate/shop/copy', '_migrate/shop/checkpoint', '_migrate/shop/checkpoint/dc2', '_migrate/shop/leader',
      '_migrate/shop/sessions/7587869', '_migrate/shop/rules/billing', '_migrate/shop/verify/last',
    ]);
  });
});

describe('identity check', () => {
  it('accepts a new migration and a matching one', () => {
    expect(checkIdentity(undefined, current)).toBe('new');
    expect(checkIdentity(meta(), current)).toBe('match');
  });
  it('refuses another etcd cluster with exit 4', () => {
    let e: MigrateError | undefined;
    try {
      checkIdentity(meta({ etcdClusterId: '999' }), current);
    } catch (err) {
      e = err as MigrateError;
    }
    expect(e?.exitCode).toBe(4);
    expect(e?.code).toBe('identity_cluster_mismatch');
    expect(e?.message).toContain('999');
  });
  it('refuses another datacenter with exit 4', () => {
    expect(() => checkIdentity(meta({ datacenters: ['dc2'] }), current)).toThrow(/targets datacenter dc2/);
  });
  it('refuses a changed mapping unless accepted', () => {
    let e: MigrateError | undefined;
    try {
      checkIdentity(meta({ mappingHash: 'bbbb' }), current);
    } catch (err) {
      e = err as MigrateError;
    }
    expect(e?.code).toBe('identity_mapping_changed');
    expect(e?.exitCode).toBe(4);
    expect(e?.hint).toMatch(/--accept-mapping-change/);
    expect(checkIdentity(meta({ mappingHash: 'bbbb' }), current, { acceptMappingChange: true })).toBe('mapping-changed');
  });
});

describe('state documents', () => {
  it('refuses a newer schema version with exit 2 and says to upgrade', () => {
    let e: MigrateError | undefined;
    try {
      parseStateDocument('_migrate/demo/meta', Buffer.from(JSON.stringify(meta({ schemaVersion: STATE_SCHEMA_VERSION + 1 }))));
    } catch (err) {
      e = err as MigrateError;
    }
    expect(e?.exitCode).toBe(2);
    expect(e?.code).toBe('state_schema_newer');
    expect(e?.hint).toMatch(/Upgrade migrate/);
  });
  it('refuses a document that is not the tool\'s (exit 4)', () => {
    expect(() => parseStateDocument('k', Buffer.from('not json'))).toThrow(/not valid JSON/);
    expect(() => parseStateDocument('k', Buffer.from('{"a":1}'))).toThrow(/no schemaVersion/);
  });
});

describe('mapping hash', () => {
  const base = parseConfig('version: 1\nid: a\nrules:\n  - { name: app, from: /app/, to: app/ }\n', 'm.yaml').config;
  it('ignores connection settings and changes with the rules', () => {
    const withConnections = parseConfig('version: 1\nid: a\ntarget: { address: http://elsewhere:8500 }\nrules:\n  - { name: app, from: /app/, to: app/ }\n', 'm.yaml').config;
    const otherTarget = parseConfig('version: 1\nid: a\nrules:\n  - { name: app, from: /app/, to: apps/ }\n', 'm.yaml').config;
    expect(mappingHash(withConnections)).toBe(mappingHash(base));
    expect(mappingHash(otherTarget)).not.toBe(mappingHash(base));
  });
});

describe('ensureMeta', () => {
  const paths = statePaths('_migrate/', 'demo');
  const now = new Date('2026-11-22T00:00:00Z');

  it('records meta for a new migration, then matches it', async () => {
    const target = new MemoryTarget();
    expect(await ensureMeta(target, paths, current, '0.1.0', now)).toBe('new');
    const stored = await readState<StateMeta>(target, paths.meta);
    expect(stored).toEqual(meta({ created: now.toISOString() }));
    expect(await ensureMeta(target, paths, current, '0.1.0', now)).toBe('match');
  });

  it('a first run that could not tell the datacenter (no agent:read) records none, and the first run that can records it', async () => {
    const target = new MemoryTarget();
    expect(await ensureMeta(target, paths, { ...current, datacenter: '' }, '0.1.0', now)).toBe('new');
    expect(await readState<StateMeta>(target, paths.meta)).toMatchObject({ datacenters: [] });
    // Another token, which may read the agent: not refused as another datacenter.
    expect(await ensureMeta(target, paths, current, '0.1.0', now)).toBe('match');
    expect(await readState<StateMeta>(target, paths.meta)).toMatchObject({ datacenters: ['dc1'] });
    expect(await ensureMeta(target, paths, { ...current, datacenter: '' }, '0.1.0', now)).toBe('match');
    expect((await rejection(ensureMeta(target, paths, { ...current, datacenter: 'dc2' }, '0.1.0', now))).code).toBe('identity_datacenter_mismatch');
  });

  it('takes the "" an earlier release recorded for an unknown datacenter as unknown', async () => {
    const target = new MemoryTarget();
    await target.applyTxn([{ verb: 'set', key: paths.meta, value: Buffer.from(JSON.stringify(meta({ datacenters: [''] }))) }]);
    expect(await ensureMeta(target, paths, current, '0.1.0', now)).toBe('match');
    expect(await readState<StateMeta>(target, paths.meta)).toMatchObject({ datacenters: ['dc1'] });
  });

  it('refuses another cluster and writes nothing', async () => {
    const target = new MemoryTarget();
    await ensureMeta(target, paths, current, '0.1.0', now);
    const writes = target.writes;
    const e = await rejection(ensureMeta(target, paths, { ...current, etcdClusterId: '222' }, '0.1.0', now));
    expect(e.exitCode).toBe(4);
    expect(target.writes).toBe(writes);
  });

  it('records an accepted mapping change and keeps the creation time', async () => {
    const target = new MemoryTarget();
    await ensureMeta(target, paths, current, '0.1.0', now);
    expect(await ensureMeta(target, paths, { ...current, mappingHash: 'cccc' }, '0.1.0', new Date('2027-01-01T00:00:00Z'), { acceptMappingChange: true })).toBe('mapping-changed');
    expect(await readState<StateMeta>(target, paths.meta)).toMatchObject({ mappingHash: 'cccc', created: now.toISOString() });
  });

  it('records the rules in meta an earlier release wrote without them, once the mapping matches; never over another mapping', async () => {
    const target = new MemoryTarget();
    await ensureMeta(target, paths, current, '0.1.0', now);
    const rules = [{ name: 'app', action: 'copy', from: '/app/', to: 'app/' }];
    expect(await ensureMeta(target, paths, { ...current, mappingHash: 'cccc', rules }, '0.1.0', now, { acceptMappingChange: true, deferMappingChange: true })).toBe('mapping-changed');
    expect((await readState<StateMeta>(target, paths.meta))?.rules).toBeUndefined();
    expect(await ensureMeta(target, paths, { ...current, rules }, '0.1.0', now)).toBe('match');
    expect(await readState<StateMeta>(target, paths.meta)).toMatchObject({ mappingHash: current.mappingHash, rules, created: now.toISOString() });
    const writes = target.writes;
    expect(await ensureMeta(target, paths, { ...current, rules }, '0.1.0', now)).toBe('match');
    expect(target.writes).toBe(writes);
  });
});
