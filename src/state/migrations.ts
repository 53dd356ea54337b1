import type { MigrationConfig } from '../config/load.js';
import { RefusedError } from '../errors.js';
import type { TargetStore } from '../stores/types.js';
import type { RecordedRule, StateMeta } from './state.js';

/** Another migration recorded beside this one under the same state prefix: its id and the rules its meta lists. */
export interface OtherMigration {
  id: string;
  rules: RecordedRule[];
}

/**
 * The other migrations whose state lies under the same state prefix
 * (`<prefix><id>/meta`). Those recorded by an earlier release list no rules
 * and are left out; `hidden` when the token's ACLs hid some of the folders,
 * which `warn` is told: the checks against other migrations see only part of them.
 */
export async function otherMigrations(target: Pick<TargetStore, 'listFolders' | 'readEntries'>, statePrefix: string, id: string, warn: (text: string) => void = () => undefined): Promise<{ others: OtherMigration[]; hidden: boolean }> {
  const { folders, filtered } = await target.listFolders(statePrefix);
  if (filtered) warn(`the Consul token may not read all of the state prefix ${statePrefix} (its ACLs hid some of it): migrations recorded there were not checked against this one (rules writing where it writes, rules cut over under its from); give this token the policy \`migrate acl\` prints (read on the whole state prefix)`);
  const metaKeys = folders.filter((f) => f !== `${statePrefix}${id}/`).map((f) => `${f}meta`);
  const others: OtherMigration[] = [];
  for (const entry of metaKeys.length > 0 ? await target.readEntries(metaKeys) : []) {
    try {
      const meta = JSON.parse(entry.value.toString('utf8')) as Partial<StateMeta>;
      if (typeof meta.id === 'string' && Array.isArray(meta.rules)) others.push({ id: meta.id, rules: meta.rules });
    } catch {
      // Not a migration's meta: nothing to compare with.
    }
  }
  return { others, hidden: filtered };
}

/**
 * The other migrations under the same state prefix that copy one of `config`'s copy rules' etcd prefixes:
 * where the state of a migration whose id (or state prefix) was edited since its copy is.
 */
export async function migrationsCopyingTheSame(target: Pick<TargetStore, 'listFolders' | 'readEntries'>, config: Pick<MigrationConfig, 'id' | 'rules' | 'state'>): Promise<string[]> {
  const { others } = await otherMigrations(target, config.state.prefix, config.id);
  const froms = new Set(config.rules.filter((r) => r.action === 'copy').map((r) => r.from));
  return others.filter((o) => o.rules.some((r) => r.action === 'copy' && froms.has(r.from))).map((o) => o.id);
}

/**
 * Copy rules whose `to` overlaps a copy rule's of another migration (one lies
 * in the other, or they are the same): each migration would take the other's
 * keys for its own.
 */
export function targetOverlaps(rules: readonly Pick<RecordedRule, 'name' | 'action' | 'to'>[], others: readonly OtherMigration[]): string[] {
  const overlaps: string[] = [];
  for (const rule of rules.filter((r) => r.action === 'copy')) {
    for (const other of others) {
      for (const theirs of other.rules.filter((r) => r.action === 'copy' && (r.to.startsWith(rule.to) || rule.to.startsWith(r.to)))) {
        overlaps.push(`rule ${rule.name} (to: ${rule.to}) and rule ${theirs.name} of migration ${other.id} (to: ${theirs.to})`);
      }
    }
  }
  return overlaps;
}

/** What to do about {@link targetOverlaps} (the refusal's hint, and plan's blocker's). */
export const OVERLAP_HINT = 'Give each migration a `to:` of its own, neither containing nor inside another migration\'s, or make the rules one migration (one migration.yaml).';

/**
 * Refuses (migration_overlap, exit 4) a mapping that writes where another
 * migration writes: each would count the other's keys as extraneous (copy
 * --delete-extraneous deletes them, verify reports them), copy over them, and,
 * once cut over, mirror them into its own etcd prefix. Says (`warn`) when the
 * token's ACLs hid some of the other migrations.
 */
export async function refuseOverlappingMigrations(target: Pick<TargetStore, 'listFolders' | 'readEntries'>, config: Pick<MigrationConfig, 'id' | 'rules' | 'state'>, warn: (text: string) => void): Promise<void> {
  const elsewhere = await sameIdElsewhere(target, config);
  const moved = targetOverlaps(config.rules, elsewhere.map((e) => e.migration));
  if (moved.length > 0) {
    const prefixes = elsewhere.map((e) => e.statePrefix).join(', ');
    throw new RefusedError('migration_overlap', `Migration "${config.id}" is recorded under the state prefix ${prefixes} too, and writes where it writes there: ${moved.join('; ')}. Under this mapping's state.prefix (${config.state.prefix}) it has no state, so none of its rules' phases: rules cut over or finalized there, which applications write in Consul, would be copied over from etcd. Nothing was written.`, {
      hint: `A migration's state does not move: set state.prefix back to ${elsewhere[0]!.statePrefix} (or leave it out if that is the default). To start another migration, give it an id and \`to:\` prefixes of its own.`,
    });
  }
  const { others } = await otherMigrations(target, config.state.prefix, config.id, warn);
  const overlaps = targetOverlaps(config.rules, others);
  if (overlaps.length === 0) return;
  throw new RefusedError('migration_overlap', `Migration "${config.id}" writes where another migration writes: ${overlaps.join('; ')}. Each would take the other's keys for its own: count them as extraneous (copy --delete-extraneous deletes them, verify reports them), copy over them, and, once cut over, mirror them into its own etcd prefix. Nothing was written.`, {
    hint: OVERLAP_HINT,
  });
}

/**
 * The same migration id recorded under other state prefixes (a `state.prefix`
 * changed in migration.yaml): `<top-level folder><id>/meta` for each top-level
 * folder of Consul's KV. Looked for only while the migration has no state under
 * its own prefix (a first run there), as the root listing walks every key.
 */
async function sameIdElsewhere(target: Pick<TargetStore, 'listFolders' | 'readEntries'>, config: Pick<MigrationConfig, 'id' | 'state'>): Promise<{ statePrefix: string; migration: OtherMigration }[]> {
  const own = `${config.state.prefix}${config.id}/meta`;
  if ((await target.readEntries([own])).length > 0) return [];
  const { folders } = await target.listFolders('');
  const candidates = folders.map((f) => `${f}${config.id}/meta`).filter((key) => key !== own);
  const found: { statePrefix: string; migration: OtherMigration }[] = [];
  for (const entry of candidates.length > 0 ? await target.readEntries(candidates) : []) {
    try {
      const meta = JSON.parse(entry.value.toString('utf8')) as Partial<StateMeta>;
      if (meta.id === config.id && Array.isArray(meta.rules)) found.push({ statePrefix: entry.key.slice(0, -`${config.id}/meta`.length), migration: { id: meta.id, rules: meta.rules } });
    } catch {
      // Not a migration's meta.
    }
  }
  return found;
}
