import { describe, expect, it } from 'vitest';
import { checkClientRules, parsePhaseDocument, PhaseDocumentError } from './phase.js';

const KEY = '_migrate/demo/rules/app';
const doc = (fields: Record<string, unknown>) => Buffer.from(JSON.stringify({ schemaVersion: 1, rule: 'app', phase: 'cutover', owner: 'consul', updated: '2025-01-01T00:00:00Z', history: [], ...fields }));

describe('parsePhaseDocument', () => {
  it('reads a missing document as owner etcd', () => {
    expect(parsePhaseDocument(KEY, 'app', undefined)).toEqual({ rule: 'app', owner: 'etcd', phase: undefined, updated: undefined, modifyIndex: 0, writesPaused: false });
  });

  it('reads the write pause a cutover or rollback sets while it moves the rule', () => {
    expect(parsePhaseDocument(KEY, 'app', doc({ phase: 'verified', owner: 'etcd', writesPaused: { since: '2025-01-01T00:00:00Z', by: 'me@host', for: 'cutover' } })).writesPaused).toBe(true);
    expect(parsePhaseDocument(KEY, 'app', doc({})).writesPaused).toBe(false);
  });

  it('takes the owner from the document', () => {
    expect(parsePhaseDocument(KEY, 'app', doc({}), 42)).toEqual({ rule: 'app', owner: 'consul', phase: 'cutover', updated: '2025-01-01T00:00:00Z', modifyIndex: 42, writesPaused: false });
    expect(parsePhaseDocument(KEY, 'app', doc({ phase: 'rolledback', owner: 'etcd' })).owner).toBe('etcd');
  });

  it('refuses a newer schema version with exit 2 and an upgrade hint', () => {
    const err = catchError(() => parsePhaseDocument(KEY, 'app', doc({ schemaVersion: 2 })));
    expect(err).toBeInstanceOf(PhaseDocumentError);
    expect(err).toMatchObject({ code: 'client_phase_newer', exitCode: 2 });
    expect(err.message).toContain('schema version 2');
    expect(err.hint).toMatch(/Upgrade/);
  });

  it.each([
    ['not JSON', Buffer.from('{nope'), /not valid JSON/],
    ['an array', Buffer.from('[]'), /not a JSON object/],
    ['no schemaVersion', Buffer.from(JSON.stringify({ rule: 'app', owner: 'etcd' })), /no valid schemaVersion/],
    ['another rule', doc({ rule: 'other' }), /names rule "other"/],
    ['an unknown phase', doc({ phase: 'flying' }), /unknown phase "flying"/],
    ['an unknown owner', doc({ owner: 'zookeeper' }), /unknown owner "zookeeper"/],
  ])('refuses %s', (_label, raw, message) => {
    const err = catchError(() => parsePhaseDocument(KEY, 'app', raw));
    expect(err).toMatchObject({ code: 'client_phase_invalid' });
    expect(err.message).toMatch(message);
    expect(err.message).toContain(KEY);
    // Deleting it is no way out: for a rule cut over, it sends writes back to etcd while Consul owns the data.
    expect(err.hint).toContain('Do not delete it');
    expect(err.hint).not.toMatch(/delete it to put the rule back/);
  });
});

describe('checkClientRules', () => {
  const known = [{ name: 'app', action: 'copy' }, { name: 'locks', action: 'copy' }];

  it('accepts known rules and drops duplicates', () => {
    expect(checkClientRules(['app', 'locks', 'app'], known, 'migration.yaml')).toEqual(['app', 'locks']);
  });

  it('names the unknown rule and the known ones', () => {
    const err = catchError(() => checkClientRules(['app', 'ap'], known, '/etc/migration.yaml'));
    expect(err).toMatchObject({ code: 'client_rule_unknown', exitCode: 2 });
    expect(err.message).toBe('Unknown rule "ap": /etc/migration.yaml defines "app", "locks".');
  });

  it('asks for at least one rule', () => {
    expect(catchError(() => checkClientRules([], known, undefined))).toMatchObject({ code: 'client_rules_missing' });
  });
});

function catchError(fn: () => unknown): PhaseDocumentError {
  try {
    fn();
  } catch (err) {
    return err as PhaseDocumentError;
  }
  throw new Error('expected an error');
}
