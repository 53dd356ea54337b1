import { ServerError, isMigrateError } from '../errors.js';
import type { MigrationConfig } from '../config/load.js';
import type { Mapping } from '../mapping/mapping.js';
import { formatKey } from '../report/keys.js';
import { statePaths } from '../state/state.js';
import { ConsulResponseError } from '../stores/consul-http.js';
import type { ConsulTarget } from '../stores/consul.js';
import { consulTooOld } from './consul-version.js';

/**
 * The permission preflight of the commands that work on Consul (DESIGN §4,
 * issue 8): before the first read or write of real work, ask Consul whether
 * the token may do what the command will do, so a missing permission stops
 * the command before anything is written, naming the permission and the
 * prefix (exit 3).
 */

/** One permission a command needs on a KV prefix. */
export interface KeyNeed {
  access: 'read' | 'write';
  prefix: string;
  /** What needs it: `rule <name>` or `state`. */
  for: string;
}

export interface MissingPermission {
  permission: string;
  prefix?: string;
  for: string;
}

/** What a command will do on Consul. */
export interface PreflightScope {
  /** Writes rule targets (copy, dualrun). */
  writeTargets: boolean;
  /** Writes state documents (copy, dualrun); `verify`: only the verify summary (`verify/`). */
  writeState: boolean | 'verify';
  /** Creates sessions (leased keys mirrored as sessions, the dual-run leader lock). */
  sessions: boolean;
}

/** The KV permissions a command with `scope` needs (pure). */
export function keyNeeds(config: MigrationConfig, mapping: Mapping, scope: PreflightScope): KeyNeed[] {
  const root = statePaths(config.state.prefix, config.id).root;
  return [
    { access: scope.writeState === true ? 'write' : 'read', prefix: root, for: 'state' },
    ...(scope.writeState === 'verify' ? [{ access: 'write', prefix: `${root}verify/`, for: 'the verify summary' } as const] : []),
    ...mapping.copyRules.map((rule): KeyNeed => ({ access: scope.writeTargets ? 'write' : 'read', prefix: rule.to, for: `rule ${rule.name}` })),
  ];
}

// An index no key ever has: the probes below always fail their check, so the txn rolls back and writes nothing.
const NEVER_INDEX = Number.MAX_SAFE_INTEGER;
const PROBE_LEAF = '.migrate-permission-probe';

/**
 * Asks Consul, without changing anything, which of `needs` the token lacks.
 * One `/v1/txn` holds a probe per need: a `check-index` (needs key:read) or a
 * `cas` (needs key:write) on a key under the prefix, with an index no key
 * has. Consul checks every op's ACL before it applies anything and reports
 * each denied op; an allowed probe then fails its index check, so the txn is
 * always rolled back.
 */
export async function findMissingKeyPermissions(target: ConsulTarget, needs: readonly KeyNeed[]): Promise<MissingPermission[]> {
  const { txnMaxOps } = await target.limits();
  const missing: MissingPermission[] = [];
  for (let i = 0; i < needs.length; i += txnMaxOps) {
    const chunk = needs.slice(i, i + txnMaxOps);
    const body = JSON.stringify(chunk.map((need) => ({ KV: { Verb: need.access === 'write' ? 'cas' : 'check-index', Key: `${need.prefix}${PROBE_LEAF}`, Index: NEVER_INDEX } })));
    const response = await target.http.request({ method: 'PUT', path: '/v1/txn', body, accept: [409] });
    if (response.status === 200) continue; // cannot happen with NEVER_INDEX; nothing to learn either way
    const errors = parseErrors(response.body);
    for (const error of errors) {
      if (!/permission denied/i.test(error.What)) continue;
      const need = chunk[error.OpIndex];
      if (need) missing.push({ permission: `key:${need.access}`, prefix: need.prefix, for: need.for });
    }
  }
  return missing;
}

function parseErrors(body: Buffer): { OpIndex: number; What: string }[] {
  try {
    return (JSON.parse(body.toString('utf8')) as { Errors?: { OpIndex: number; What: string }[] | null }).Errors ?? [];
  } catch {
    return [];
  }
}

/** Whether the token may create sessions on the agent's node: creates one (10 s TTL, no checks, no keys) and destroys it. */
export async function findMissingSessionPermission(target: ConsulTarget): Promise<MissingPermission[]> {
  try {
    const id = await target.createSession({ name: 'migrate permission probe', ttlSeconds: 10 });
    await target.destroySession(id).catch(() => undefined);
    return [];
  } catch (err) {
    if (err instanceof ConsulResponseError && err.code === 'consul_permission_denied') return [{ permission: 'session:write', for: 'sessions on the agent\'s node' }];
    throw err;
  }
}

/** The error a preflight raises: every missing permission with its prefix, and the fix. */
export function missingPermissionsError(address: string, command: string, missing: readonly MissingPermission[]): ServerError {
  const list = missing.map((m) => `${m.permission}${m.prefix !== undefined ? ` on prefix ${m.prefix === '' ? '"" (the whole KV store)' : formatKey(m.prefix)}` : ''} (${m.for})`);
  return new ServerError('consul_permission_denied', `The Consul token lacks ${list.join(', ')} at ${address}; ${command} stopped before doing any work and wrote nothing.`, {
    hint: 'Create the migrator\'s policy that `migrate acl` prints and attach it to the token, then run `migrate doctor`.',
    details: { missing },
  });
}

/**
 * The preflight: throws a {@link ServerError} (exit 3) naming every missing
 * permission and prefix before `command` reads or writes anything else.
 */
export async function preflightConsul(target: ConsulTarget, config: MigrationConfig, mapping: Mapping, command: string, scope: PreflightScope): Promise<void> {
  const tooOld = consulTooOld(target.address, (await target.info()).version);
  if (tooOld) throw tooOld;
  const missing = await findMissingKeyPermissions(target, keyNeeds(config, mapping, scope));
  if (scope.sessions && missing.length === 0) missing.push(...(await findMissingSessionPermission(target)));
  if (missing.length > 0) throw missingPermissionsError(target.address, command, missing);
}

/** For doctor: the same probes as a list of what is missing, or the error that stopped them. */
export async function checkPermissions(target: ConsulTarget, config: MigrationConfig, mapping: Mapping): Promise<{ missing: MissingPermission[]; checked: number } | { error: unknown }> {
  try {
    const needs = keyNeeds(config, mapping, { writeTargets: true, writeState: true, sessions: true });
    const missing = await findMissingKeyPermissions(target, needs);
    missing.push(...(await findMissingSessionPermission(target)));
    return { missing, checked: needs.length + 1 };
  } catch (err) {
    if (!isMigrateError(err)) throw err;
    return { error: err };
  }
}
