import { describe, expect, it } from 'vitest';
import type { SourceEntry, SourceEvent, TxnOp } from '../stores/types.js';
import { planRevision, replicationOps, routeForReplication, type ReplicationRoute } from './plan-revision.js';
import { watchRange } from './dualrun.js';
import { parseConfig } from '../config/load.js';

const entry = (key: string, value: string, lease = '0'): SourceEntry => ({ key: Buffer.from(key), value: Buffer.from(value), createRevision: 1, modRevision: 9, version: 1, lease });
const put = (key: string, value: string, lease = '0', previousLease?: string): SourceEvent => ({ type: 'put', entry: entry(key, value, lease), ...(previousLease !== undefined ? { previous: entry(key, 'old', previousLease) } : {}) });
const del = (key: string): SourceEvent => ({ type: 'delete', entry: entry(key, '') });
const route = (key: Buffer): ReplicationRoute => {
  const k = key.toString();
  if (k.startsWith('/svc/')) return { kind: 'mapped', rule: 'svc', target: k.slice(1), leases: 'session' };
  if (k.startsWith('/locks/')) return { kind: 'mapped', rule: 'locks', target: k.slice(1), leases: 'skip' };
  if (k.startsWith('/app/')) return { kind: 'mapped', rule: 'app', target: k.slice(1), leases: 'persist' };
  return { kind: 'ignored' };
};
const sessions: Record<string, string> = { '7': 'S7', '8': 'S8' };
const plan = (events: SourceEvent[], fits = (_: TxnOp[]) => true) =>
  planRevision({ message: { kind: 'revision', revision: 9, events }, route, sessionFor: (l) => sessions[l], fits });
const verbs = (ops: TxnOp[]) => ops.map((o) => `${o.verb} ${o.key}${'session' in o ? ` ${o.session}` : ''}`);

describe('planRevision', () => {
  it('keeps event order and ignores keys outside the copy rules', () => {
    const p = plan([put('/app/a', '1'), del('/app/b'), put('/registry/x', 'k8s'), put('/app/c', '3')]);
    expect(verbs(p.ops)).toEqual(['set app/a', 'delete app/b', 'set app/c']);
    expect(p.ignored).toBe(1);
  });

  it('locks leased keys with their lease\'s session and moves them between sessions in one txn', () => {
    expect(verbs(plan([put('/svc/a', 'x', '7')]).ops)).toEqual(['lock svc/a S7']);
    expect(verbs(plan([put('/svc/a', 'x', '8', '7')]).ops)).toEqual(['unlock svc/a S7', 'lock svc/a S8']);
    expect(verbs(plan([put('/svc/a', 'x', '7', '7')]).ops)).toEqual(['lock svc/a S7']);
  });

  it('counts the ops of an event as planRevision makes them (the audit sizes write groups with it)', () => {
    for (const [event, leases] of [[put('/svc/a', 'x', '8', '7'), 'session'], [put('/svc/a', 'x', '7', '7'), 'session'], [put('/svc/a', 'x', '0', '7'), 'session'], [put('/svc/a', 'x', '7'), 'session'], [put('/app/a', 'x', '8', '7'), 'persist'], [del('/svc/a'), 'session']] as const) {
      expect(replicationOps(event, leases), JSON.stringify(event.entry)).toBe(plan([event]).ops.length);
    }
  });

  it('releases a key that leaves its lease, writing its new value', () => {
    const p = plan([put('/svc/a', 'free', '0', '7')]);
    expect(verbs(p.ops)).toEqual(['unlock svc/a S7']);
    expect((p.ops[0] as { value: Buffer }).value.toString()).toBe('free');
  });

  it('frees a key that leaves a lease whose session is no longer known (the lease ended while Consul was down): deleted and set, not set under the old lock', () => {
    expect(verbs(plan([put('/svc/a', 'free', '0', '99')]).ops)).toEqual(['delete svc/a', 'set svc/a']);
    // Too large for a txn: single PUTs free it of whichever session holds it in Consul, and write the value; nothing in the txn
    // (a delete there, sent after the PUT, deleted the value just written).
    const big = plan([put('/svc/a', 'x'.repeat(10), '0', '99')], (ops) => ops.length === 1 && ops[0]!.verb === 'delete');
    expect(verbs(big.ops)).toEqual([]);
    expect(big.largePuts).toEqual([{ key: 'svc/a', value: Buffer.from('x'.repeat(10)), free: true }]);
    // Under persist, a key was never locked: a set.
    expect(verbs(plan([put('/app/a', 'free', '0', '99')]).ops)).toEqual(['set app/a']);
  });

  it('skips a put on an ended lease (etcd deletes the key next) and deletes a key that became leased under leases: skip', () => {
    const p = plan([put('/svc/a', 'x', '99'), put('/locks/job', 'me', '7')]);
    expect(verbs(p.ops)).toEqual(['delete locks/job']);
    expect(p.expiredLeases).toBe(1);
  });

  it('persist rules write leased keys as plain keys', () => {
    expect(verbs(plan([put('/app/a', 'x', '7')]).ops)).toEqual(['set app/a']);
  });

  it('sends a value too large for any txn by single PUT (with acquire for session keys)', () => {
    const p = plan([put('/svc/big', 'x'.repeat(10), '7'), put('/app/small', 's')], (ops) => !ops.some((o) => o.key === 'svc/big'));
    expect(p.largePuts).toEqual([{ key: 'svc/big', value: Buffer.from('x'.repeat(10)), acquire: 'S7' }]);
    expect(verbs(p.ops)).toEqual(['set app/small']);
  });

  it('a value too large for a txn that leaves its lease, or moves to another, frees the key by single PUT too: no release in the txn', () => {
    const small = (ops: TxnOp[]) => !ops.some((o) => o.key === 'svc/big');
    // Leaves its lease: a PUT alone would keep the old session's lock, and Consul would delete the key with that session.
    const left = plan([put('/svc/big', 'x'.repeat(10), '0', '7')], small);
    expect(verbs(left.ops)).toEqual([]);
    expect(left.largePuts).toEqual([{ key: 'svc/big', value: Buffer.from('x'.repeat(10)), free: true }]);
    // Moves to another lease: an empty-valued unlock in the txn, sent after the PUT whose acquire the old lock refused, left it empty.
    const moved = plan([put('/svc/big', 'x'.repeat(10), '8', '7')], small);
    expect(verbs(moved.ops)).toEqual([]);
    expect(moved.largePuts).toEqual([{ key: 'svc/big', value: Buffer.from('x'.repeat(10)), acquire: 'S8', free: true }]);
  });

  it('reports puts Consul cannot take, and deletes the last value that fitted of a key whose value outgrew the limit', () => {
    const { mapping } = parseConfig(`version: 1
id: u
target:
  limits: { maxValueBytes: 8 }
rules:
  - { name: app, from: /app/, to: app/ }
  - { name: k8s, from: /registry/, action: keep }
`, 'migration.yaml');
    const p = planRevision({
      message: { kind: 'revision', revision: 9, events: [put('/app/big', 'x'.repeat(9)), put('/app/a//b', 'v'), put('/app/ok', 'fits'), put('/registry/big', 'x'.repeat(9)), del('/app/gone')] },
      route: (key, size) => routeForReplication(mapping, key, size),
      sessionFor: () => undefined,
      fits: () => true,
    });
    expect(verbs(p.ops)).toEqual(['delete app/big', 'set app/ok', 'delete app/gone']);
    expect(p.unmappable.map((u) => [u.key.toString(), u.rule, u.reason])).toEqual([['/app/big', 'app', 'value-too-large'], ['/app/a//b', 'app', 'empty-segment']]);
    expect(p.ignored).toBe(3);
  });
});

describe('watchRange', () => {
  it('covers every copy rule with one range', () => {
    const { mapping } = parseConfig('version: 1\nid: x\nrules:\n  - { name: a, from: /platform/, to: platform/ }\n  - { name: b, from: /services/, to: services/ }\n  - { name: k, from: /zzz/, action: keep }\n', 'm.yaml');
    const range = watchRange(mapping);
    expect(range.start.toString()).toBe('/platform/');
    expect(range.end.toString()).toBe('/services0');
  });
});
