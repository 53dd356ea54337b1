import { describe, expect, it } from 'vitest';
import { MemoryTarget } from '../stores/memory.js';
import { otherMigrations, refuseOverlappingMigrations, targetOverlaps } from './migrations.js';

const meta = (id: string, rules: { name: string; action: string; from: string; to: string }[]) => ({ schemaVersion: 1, id, etcdClusterId: '1', datacenters: ['dc1'], mappingHash: 'h', rules, created: '2026-01-01T00:00:00Z', toolVersion: 't' });

function world() {
  const target = new MemoryTarget();
  const put = (key: string, value: unknown) => target.entries.set(key, { key, value: Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)), flags: 0, modifyIndex: 1 });
  put('_migrate/team-b/meta', meta('team-b', [{ name: 'b', action: 'copy', from: '/team-b/', to: 'apps/b/' }, { name: 'k', action: 'keep', from: '/team-b/k8s/', to: '/team-b/k8s/' }]));
  put('_migrate/team-b/checkpoint', '{}');
  // Recorded by an earlier release (no rules), and a folder that is no migration's.
  put('_migrate/old/meta', { ...meta('old', []), rules: undefined });
  put('_migrate/junk/meta', 'not json');
  put('apps/b/x', 'v');
  return target;
}

describe('other migrations under the state prefix', () => {
  it('lists the migrations beside this one whose meta lists rules', async () => {
    const { others, hidden } = await otherMigrations(world(), '_migrate/', 'team-c');
    expect(others.map((o) => o.id)).toEqual(['team-b']);
    expect(hidden).toBe(false);
    expect((await otherMigrations(world(), '_migrate/', 'team-b')).others).toEqual([]);
  });

  it('a copy rule whose to lies in, contains, or is another migration\'s copy rule\'s to overlaps it; keep rules and other prefixes do not', async () => {
    const { others } = await otherMigrations(world(), '_migrate/', 'team-c');
    const rule = (name: string, to: string, action = 'copy') => ({ name, action, to });
    expect(targetOverlaps([rule('inside', 'apps/b/extra/'), rule('around', 'apps/'), rule('same', 'apps/b/'), rule('beside', 'apps/bb/'), rule('kept', 'apps/b/', 'keep')], others)).toEqual([
      'rule inside (to: apps/b/extra/) and rule b of migration team-b (to: apps/b/)',
      'rule around (to: apps/) and rule b of migration team-b (to: apps/b/)',
      'rule same (to: apps/b/) and rule b of migration team-b (to: apps/b/)',
    ]);
  });

  it('refuses a migration that writes where another does (exit 4), and lets one that does not go on', async () => {
    const target = world();
    const config = (to: string) => ({ id: 'team-c', state: { prefix: '_migrate/' }, rules: [{ name: 'c', action: 'copy' as const, from: '/legacy/', to, keys: 'reject' as const, leases: 'session' as const }] });
    const warnings: string[] = [];
    await expect(refuseOverlappingMigrations(target, config('apps/b/extra/'), (w) => warnings.push(w))).rejects.toMatchObject({ code: 'migration_overlap', exitCode: 4, message: expect.stringContaining('rule c (to: apps/b/extra/) and rule b of migration team-b (to: apps/b/)') });
    await expect(refuseOverlappingMigrations(target, config('apps/c/'), (w) => warnings.push(w))).resolves.toBeUndefined();
    expect(warnings).toEqual([]);
  });

  it('refuses a migration whose state.prefix changed (exit 4): under the new one it has no phases, and copy would write over its rules cut over under the old one', async () => {
    const target = world();
    const config = (prefix: string, to: string) => ({ id: 'team-b', state: { prefix }, rules: [{ name: 'b', action: 'copy' as const, from: '/team-b/', to, keys: 'reject' as const, leases: 'session' as const }] });
    await expect(refuseOverlappingMigrations(target, config('_mig3/', 'apps/b/'), () => undefined)).rejects.toMatchObject({
      code: 'migration_overlap', exitCode: 4,
      message: expect.stringContaining('Migration "team-b" is recorded under the state prefix _migrate/ too, and writes where it writes there: rule b (to: apps/b/) and rule b of migration team-b (to: apps/b/)'),
      hint: expect.stringContaining('set state.prefix back to _migrate/'),
    });
    // Under its own prefix, or writing elsewhere, it goes on.
    await expect(refuseOverlappingMigrations(target, config('_migrate/', 'apps/b/'), () => undefined)).resolves.toBeUndefined();
    await expect(refuseOverlappingMigrations(target, config('_mig3/', 'apps/other/'), () => undefined)).resolves.toBeUndefined();
    // Once it has state under the new prefix (its operator chose to start it there), the old one is not looked for.
    target.entries.set('_mig3/team-b/meta', { key: '_mig3/team-b/meta', value: Buffer.from(JSON.stringify(meta('team-b', []))), flags: 0, modifyIndex: 2 });
    await expect(refuseOverlappingMigrations(target, config('_mig3/', 'apps/b/'), () => undefined)).resolves.toBeUndefined();
  });

  it('says when the token\'s ACLs hid part of the state prefix: the other migrations there were not checked', async () => {
    const target = world();
    const listFolders = target.listFolders.bind(target);
    // As Consul answers a token that reads only its own migration's state: the list, filtered, and its header.
    target.listFolders = async (prefix: string) => ({ folders: (await listFolders(prefix)).folders.filter((f) => f === '_migrate/team-c/'), filtered: true });
    const warnings: string[] = [];
    const config = { id: 'team-c', state: { prefix: '_migrate/' }, rules: [{ name: 'c', action: 'copy' as const, from: '/legacy/', to: 'apps/b/extra/', keys: 'reject' as const, leases: 'session' as const }] };
    await expect(refuseOverlappingMigrations(target, config, (w) => warnings.push(w))).resolves.toBeUndefined();
    expect(warnings).toEqual([expect.stringContaining('the Consul token may not read all of the state prefix _migrate/ (its ACLs hid some of it): migrations recorded there were not checked')]);
  });
});
