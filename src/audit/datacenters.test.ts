import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { datacenterLabel, tallyDatacenters, unnamedPrimaryNote } from './datacenters.js';
import type { RuleTally } from './tally.js';

const yaml = (rules: string) => `version: 1\nid: m\nrules:\n${rules}`;

/** A rule's tally with only the figures the per-datacenter sums read. */
function tally(rule: string, action: RuleTally['action'], figures: Partial<RuleTally>): RuleTally {
  return {
    rule, from: `/${rule}/`, to: `${rule}/`, action, keysPolicy: 'reject', leasesPolicy: 'session', keys: 0, valueBytes: 0, copyKeys: 0, copyValueBytes: 0, escapedKeys: 0,
    unmappableKeys: 0, leasedKeys: 0, sessions: 0, sessionsAtLeast: false, persistedKeys: 0, skippedKeys: 0, keptKeys: 0, singlePutKeys: 0, instances: 0, instancesWithoutLease: 0, noInstanceKeys: 0,
    ...figures,
  };
}

const rules = [
  tally('app', 'copy', { copyKeys: 10, copyValueBytes: 1000, sessions: 2, singlePutKeys: 1 }),
  tally('local', 'copy', { copyKeys: 3, copyValueBytes: 30, sessions: 1 }),
  tally('far', 'copy', { copyKeys: 1, copyValueBytes: 5, sessionsAtLeast: true, sessions: 7 }),
  tally('svc', 'service', { instances: 4 }),
];
/** The leases becoming sessions per rule: `local` shares one of `app`'s (one session, not two, where both go). */
const leases: Record<string, string[]> = { app: ['L1', 'L2'], local: ['L2'], far: ['F1', 'F2', 'F3', 'F4', 'F5', 'F6', 'F7'] };
function sessionsOf(names: readonly string[]): { sessions: number; atLeast: boolean } {
  return { sessions: new Set(names.flatMap((n) => leases[n] ?? [])).size, atLeast: names.includes('far') };
}

const config = parseConfig(yaml([
  '  - { name: app, from: /app/, to: app/, datacenters: [dc1, dc2] }',
  '  - { name: local, from: /app/local/, to: local/ }',
  '  - { name: far, from: /far/, to: far/, datacenters: [dc3] }',
  '  - { name: svc, from: /svc/, action: service }',
  '',
].join('\n')), 'm.yaml').config;

describe('tallyDatacenters', () => {
  it('is undefined when no rule names datacenters, so reports keep their shape', () => {
    const single = parseConfig(yaml('  - { name: app, from: /app/, to: app/ }\n'), 'm.yaml').config;
    expect(tallyDatacenters(single, rules, 'dc1', sessionsOf)).toBeUndefined();
  });

  it('sums the rules copied to each datacenter, counts each lease\'s session once there, the primary first; service instances count in the primary', () => {
    expect(tallyDatacenters(config, rules, 'dc1', sessionsOf)).toEqual([
      { datacenter: 'dc1', primary: true, rules: ['app', 'local'], copyKeys: 13, copyValueBytes: 1030, sessions: 2, sessionsAtLeast: false, singlePutKeys: 1, instances: 4 },
      { datacenter: 'dc2', primary: false, rules: ['app'], copyKeys: 10, copyValueBytes: 1000, sessions: 2, sessionsAtLeast: false, singlePutKeys: 1, instances: 0 },
      { datacenter: 'dc3', primary: false, rules: ['far'], copyKeys: 1, copyValueBytes: 5, sessions: 7, sessionsAtLeast: true, singlePutKeys: 0, instances: 0 },
    ]);
  });

  it('an unnamed primary is null with primary: true, and the note says it may be one of the named datacenters', () => {
    const dcs = tallyDatacenters(config, rules, undefined, sessionsOf)!;
    expect(dcs.map((d) => [d.datacenter, d.primary, d.rules])).toEqual([[null, true, ['local']], ['dc1', false, ['app']], ['dc2', false, ['app']], ['dc3', false, ['far']]]);
    expect(dcs.map(datacenterLabel)).toEqual(['the target\'s datacenter', 'dc1', 'dc2', 'dc3']);
    expect(unnamedPrimaryNote(dcs)).toBe('the target\'s datacenter is not named (set target.datacenter in migration.yaml); if it is one of dc1, dc2, dc3, that datacenter gets the rules of both rows.');
    expect(unnamedPrimaryNote(tallyDatacenters(config, rules, 'dc1', sessionsOf)!)).toBeUndefined();
    expect(datacenterLabel({ datacenter: 'dc1', primary: true })).toBe('dc1 (primary)');
  });
});
