import { describe, expect, it } from 'vitest';
import {
  EXAMPLES_CAP,
  FINDING_CATALOGUE,
  FindingCollector,
  blockerCount,
  kubernetesSeverity,
  lockSeverity,
  reasonCode,
  unmappableSeverity,
  unmappedSeverity,
  unreadableSeverity,
} from './findings.js';

describe('finding rules', () => {
  it('every code is snake_case and has a title, a unit and a next step', () => {
    for (const [code, info] of Object.entries(FINDING_CATALOGUE)) {
      expect(code).toMatch(/^[a-z]+(_[a-z0-9]+)+$/);
      expect(info.title.length).toBeGreaterThan(10);
      expect(info.hint.length).toBeGreaterThan(10);
    }
  });

  it('maps every reason of the mapping to a key or value code', () => {
    expect(reasonCode('leading-slash')).toBe('key_leading_slash');
    expect(reasonCode('value-too-large')).toBe('value_too_large');
    expect(reasonCode('collision')).toBe('key_collision');
  });

  it('judges severities by mode and by what the rules do with the keys', () => {
    expect(unmappableSeverity('mapping', 'dot-segment')).toBe('blocker');
    expect(unmappableSeverity('identity', 'dot-segment')).toBe('warning');
    expect(unmappableSeverity('identity', 'value-too-large')).toBe('blocker');
    expect(unmappedSeverity('error')).toBe('blocker');
    expect(unmappedSeverity('skip')).toBe('info');
    expect(kubernetesSeverity('mapping', ['copy'])).toBe('blocker');
    expect(kubernetesSeverity('mapping', ['keep'])).toBe('info');
    expect(kubernetesSeverity('identity', ['copy'])).toBe('warning');
    expect(lockSeverity(['session'])).toBe('warning');
    expect(lockSeverity(['persist'])).toBe('warning');
    expect(lockSeverity(['skip', 'keep'])).toBe('info');
    // Named like a lock, but no key there holds a lease: data, nothing to decide.
    expect(lockSeverity(['copy'], 0)).toBe('info');
    expect(lockSeverity(['copy'], 3)).toBe('warning');
    expect(unreadableSeverity('mapping', true)).toBe('blocker');
    expect(unreadableSeverity('mapping', false)).toBe('warning');
    expect(unreadableSeverity('identity', true)).toBe('warning');
  });

  it('counts exactly, keeps capped examples, builds examples only while needed, sorts blockers first', () => {
    const collector = new FindingCollector();
    let built = 0;
    for (let i = 0; i < 100; i++) collector.note('key_dot_segment', 'blocker', () => (built++, { key: `k${i}` }), 'r');
    collector.note('key_escaped', 'info', () => ({ key: 'x' }), 'r');
    collector.note('folder_key_with_value', 'warning', undefined);
    const findings = collector.findings();
    expect(findings.map((f) => [f.code, f.severity, f.count])).toEqual([
      ['key_dot_segment', 'blocker', 100],
      ['folder_key_with_value', 'warning', 1],
      ['key_escaped', 'info', 1],
    ]);
    expect(findings[0]!.examples).toHaveLength(EXAMPLES_CAP);
    expect(built).toBe(EXAMPLES_CAP);
    expect(blockerCount(findings)).toBe(1);
  });
});
