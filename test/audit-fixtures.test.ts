import { readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FINDING_CATALOGUE, type FindingCode } from '../src/audit/findings.js';
import { leaseHex } from '../fixtures/loader.js';
import { expectedFile, fixturesDir, normalizeError, normalizeReport, runScenario } from './support/audit-fixtures.js';

/**
 * The audit scenarios of fixtures/: each dataset is loaded into the real etcd,
 * `migrate audit --format json` runs against it, and the normalized report must
 * equal `expected-audit.json` (regenerate deliberately with UPDATE_FIXTURES=1).
 */
const scenarios = readdirSync(fixturesDir).filter((name) => existsSync(join(fixturesDir, name, 'dataset.json')));
const seen = new Set<string>();

describe('audit scenarios (real etcd and Consul)', () => {
  it.each(scenarios)('%s: the normalized audit report matches expected-audit.json', async (name) => {
    const run = await runScenario(name, 'audit');
    if (name === 'colliding-rules') {
      expect(run.code, run.stderr).toBe(2);
      // The loader names the file, line and column; nothing was read.
      expect(run.stderr).toMatch(/migration\.yaml:\d+:\d+: rules\[1\]\.to/);
      expect(normalizeError(run.report, run.code)).toEqual(expectedFile(name, 'expected-audit.json', normalizeError(run.report, run.code)));
      return;
    }
    expect(run.report, run.stderr).toBeDefined();
    const normalized = normalizeReport(run.report!, run);
    const expected = expectedFile(name, 'expected-audit.json', normalized);
    // etcd derives lease ids from its member id: on one test etcd in sixteen they start with a zero
    // nibble, so every `{lease-hex}` key is a byte shorter. Key bytes are then compared without those keys' share.
    if ([...run.leases.values()].some((id) => leaseHex(id).length < 16)) expect(withoutKeyBytes(normalized)).toEqual(withoutKeyBytes(expected));
    else expect(normalized).toEqual(expected);
    for (const finding of (run.report!.findings as { code: string }[])) seen.add(finding.code);
    // Values are never printed, whatever the format.
    expect(run.stdout).not.toContain('postgres://');
    expect(run.stdout).not.toContain('never shown');
    if (run.dataset.traffic) expect(run.trafficWrites).toBeGreaterThan(0);
  }, 120_000);

  it('plan of the mapping scenarios matches expected-plan.json', async () => {
    // Exit 1: the scenario has blockers; 0: none.
    for (const [name, code] of [['platform-mapping', 1], ['rbac-partial', 1], ['service-rules', 0], ['datacenters', 0]] as const) {
      const run = await runScenario(name, 'plan');
      expect(run.report, run.stderr).toBeDefined();
      const normalized = normalizeReport(run.report!, run);
      expect(normalized).toEqual(expectedFile(name, 'expected-plan.json', normalized));
      expect(run.code, name).toBe(code);
    }
  }, 120_000);

  it('together, the scenarios produce every finding code but key_empty (only the literal key "/" at the etcd root has it), key_too_long (a key of a megabyte: test/copy.test.ts audits one) and key_charset (only a Consul 1.21.5 agent: src/audit/audit.test.ts)', () => {
    const expected = (Object.keys(FINDING_CATALOGUE) as FindingCode[]).filter((code) => code !== 'key_empty' && code !== 'key_too_long' && code !== 'key_charset');
    expect([...seen].sort()).toEqual(expect.arrayContaining(expected.sort()));
  });
});

/** The report without its `keyBytes` figures (for runs whose lease ids are a hex digit short). */
function withoutKeyBytes(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutKeyBytes);
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).filter(([k]) => k !== 'keyBytes').map(([k, v]) => [k, withoutKeyBytes(v)]));
  return value;
}
