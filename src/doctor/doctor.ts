import { randomBytes } from 'node:crypto';
import { byteLimitsAssumed } from '../audit/limits.js';
import { STRICT_CHARSET_TEXT } from '../mapping/escape.js';
import { OLDEST_SUPPORTED_CONSUL, consulTooOld } from './consul-version.js';
import { ExitCode, isMigrateError, ServerError, type MigrateError } from '../errors.js';
import type { Connections } from '../config/connections.js';
import type { MigrationConfig } from '../config/load.js';
import { formatKey } from '../report/keys.js';
import { ConsulHttp } from '../stores/consul-http.js';
import { ConsulTarget } from '../stores/consul.js';
import { EtcdSource, unorderedProgress } from '../stores/etcd.js';
import { EtcdWriter } from '../stores/etcd-writer.js';
import { prefixRange } from '../stores/key-range.js';
import type { Mapping } from '../mapping/mapping.js';
import { checkPermissions } from './preflight.js';
import { checkIdentity, mappingHash, parseStateDocument, statePaths, type StateMeta, type StatePaths } from '../state/state.js';
import { ownersKey, tripsPrefix } from '../cutover/phase.js';
import { readOwnership, refuseOwnedMappingChanges } from '../cutover/state-io.js';
import { datacenterViews, namesDatacenters } from '../mapping/datacenters.js';
import type { LoadedConfig } from '../config/load.js';

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

export interface DoctorCheck {
  name: string;
  status: CheckStatus;
  message: string;
  /** The error code when the check failed. */
  code?: string;
  hint?: string;
  /** The exit code its failure means, as the commands exit for that error (3, a server's failure, when not given). */
  exitCode?: ExitCode;
}

export interface DoctorResult {
  configFile: string | undefined;
  etcd: { endpoints: string; version?: string; clusterId?: string; leader?: string; revision?: number };
  consul: { address: string; version?: string; datacenter?: string; leader?: string; txnMaxOps?: number; aclsEnforced?: boolean };
  checks: DoctorCheck[];
  /** True when every server check passed (warnings allowed). */
  ok: boolean;
  /** 0 when ok; else 3 when a server failed, then 2 for a configuration or state the commands refuse as usage, then 4. */
  exitCode: ExitCode;
}

export interface DoctorInput {
  config: MigrationConfig;
  configFile: string | undefined;
  connections: Connections;
  /** The compiled rules: with them, doctor checks the permissions every rule needs (the commands' preflight). */
  mapping?: Mapping;
  timeoutMs?: number;
}

/**
 * Checks that both servers answer and that the configured credentials can do
 * what the migration needs: read the source ranges, write under the state
 * prefix. Never throws for a server problem: each becomes a failed check.
 */
export async function runDoctor(input: DoctorInput): Promise<DoctorResult> {
  const { config, connections } = input;
  const timeoutMs = input.timeoutMs ?? 5_000;
  const checks: DoctorCheck[] = [];
  const etcd = new EtcdSource({ ...connections.source, timeoutMs });
  const consul = new ConsulTarget({ ...connections.target, timeoutMs }, { retry: { attempts: 1 }, limits: config.target.limits });
  const result: DoctorResult = { configFile: input.configFile, etcd: { endpoints: etcd.endpoints }, consul: { address: consul.address }, checks, ok: true, exitCode: ExitCode.ok };
  const fail = (name: string, err: unknown): void => {
    if (!isMigrateError(err)) throw err;
    checks.push(failedCheck(name, err));
  };

  checks.push(input.configFile
    ? { name: 'config', status: 'ok', message: `${input.configFile}: migration "${config.id}", ${config.rules.length} rule(s)` }
    : { name: 'config', status: 'skip', message: 'no migration.yaml (checked --config, MIGRATE_CONFIG, ./migration.yaml); using flags, environment and defaults' });

  try {
    let etcdClusterId: string | undefined;
    try {
      const status = await etcd.status();
      etcdClusterId = status.clusterId;
      Object.assign(result.etcd, { version: status.version, clusterId: status.clusterId, leader: status.leader, revision: status.revision });
      checks.push({ name: 'etcd.reachable', status: 'ok', message: `etcd ${status.version} at ${etcd.endpoints}, cluster ${status.clusterId}, leader ${status.leader}, revision ${status.revision}` });
      if (unorderedProgress(status.version)) {
        checks.push({
          name: 'etcd.watch-progress', status: 'warn',
          message: `etcd ${status.version} answers a watch progress request with its current revision ahead of events it has not sent yet (etcd-io/etcd#15220): the dual-run takes such an answer only once etcd's store shows no change it has not had (checked at most every 5 s), so the checkpoint of idle rules follows etcd a few seconds late, and verify may wait that long for it`,
          hint: 'Upgrade etcd to 3.4.31+ or 3.5.13+ for a checkpoint that follows etcd at once.',
        });
      }
    } catch (err) {
      fail('etcd.reachable', err);
    }
    if (etcdClusterId) {
      // Read one key of each copied or registered range, never a fixed probe key the user may not be allowed to read.
      const prefixes = config.rules.filter((r) => r.action !== 'keep').map((r) => r.from);
      const ranges = prefixes.length > 0 ? prefixes : [''];
      const denied: string[] = [];
      for (const prefix of ranges) {
        try {
          for await (const _page of etcd.readPages(prefixRange(prefix), { pageKeys: 1, keysOnly: true })) break;
        } catch (err) {
          if (isMigrateError(err) && err.code === 'etcd_permission_denied') denied.push(prefix);
          else {
            fail('etcd.read', err);
            denied.length = 0;
            break;
          }
        }
      }
      if (denied.length > 0) {
        checks.push({
          name: 'etcd.read',
          status: 'fail',
          code: 'etcd_permission_denied',
          message: `the etcd user may not read ${denied.map((p) => (p === '' ? 'the whole keyspace' : `prefix ${formatKey(p)}`)).join(', ')}`,
          hint: 'Grant the etcd role read on every rule range (`migrate acl` prints it).',
        });
      } else if (!checks.some((c) => c.name === 'etcd.read')) {
        checks.push({ name: 'etcd.read', status: 'ok', message: prefixes.length > 0 ? `can read ${prefixes.length} rule range(s)` : 'can read the keyspace (no rules configured)' });
      }
      await checkEtcdWrite(etcd, config, checks);
    }

    let consulUp = false;
    try {
      const info = await consul.info();
      consulUp = true;
      Object.assign(result.consul, { version: info.version, datacenter: info.datacenter, leader: info.leader, txnMaxOps: (await consul.limits()).txnMaxOps });
      const reached = `Consul ${info.version} at ${consul.address}, datacenter ${info.datacenter || 'unknown'}, leader ${info.leader || 'none'}`;
      if (info.leader) checks.push({ name: 'consul.reachable', status: 'ok', message: reached });
      else fail('consul.reachable', new ServerError('consul_no_leader', reached, { hint: 'Wait for the Consul servers to elect a leader; if none is, check that a quorum of them is up (`consul operator raft list-peers`).' }));
      const tooOld = consulTooOld(consul.address, info.version);
      checks.push(tooOld
        ? { name: 'consul.version', status: 'fail', message: tooOld.message, code: tooOld.code, hint: tooOld.hint, exitCode: tooOld.exitCode }
        : info.version === 'unknown'
          ? { name: 'consul.version', status: 'warn', message: `the Consul version is unknown (the token may not read /v1/agent/self), so it cannot be checked against the oldest supported, ${OLDEST_SUPPORTED_CONSUL}`, hint: 'Give the token agent:read (`migrate acl` prints it), or check `consul version` on the servers by hand.' }
          : { name: 'consul.version', status: 'ok', message: `Consul ${info.version} is supported (the oldest supported is ${OLDEST_SUPPORTED_CONSUL})` });
      if (info.strictKeys) {
        checks.push({ name: 'consul.key-rule', status: 'warn', message: `the agent refuses /v1/kv keys outside ${STRICT_CHARSET_TEXT} (and any ".."), Consul 1.21.5's rule: keys with other characters are not copied, under either \`keys\` policy`, hint: 'Upgrade the Consul agents to 1.21.6 or later (HashiCorp lifted the rule); `migrate audit` lists the keys it holds back (key_charset).' });
      }
      const limits = await consul.limits();
      const configured = config.target.limits ?? {};
      // Without agent:read the agent's byte limits are unknown too: Consul's defaults are assumed, which lowered limits refuse mid-copy.
      const bytesAssumed = byteLimitsAssumed(info, configured);
      // migration.yaml's limits win; above what the agent enforces, Consul refuses what the tool plans as fitting.
      const overAgent = [
        configured.maxValueBytes !== undefined && info.maxValueBytes !== undefined && configured.maxValueBytes > info.maxValueBytes ? `target.limits.maxValueBytes ${configured.maxValueBytes} is over the agent's kv_max_value_size ${info.maxValueBytes}` : '',
        configured.txnMaxBytes !== undefined && info.txnMaxBytes !== undefined && configured.txnMaxBytes > info.txnMaxBytes ? `target.limits.txnMaxBytes ${configured.txnMaxBytes} is over the ${info.txnMaxBytes} bytes a txn may have on the agent` : '',
      ].filter(Boolean);
      if (overAgent.length > 0) {
        checks.push({ name: 'consul.limits-config', status: 'warn', message: `${overAgent.join('; ')}: Consul refuses what the tool plans by them`, hint: 'Lower target.limits in migration.yaml to the agent\'s values, or leave them out: the tool reads them from the agent.' });
      }
      checks.push({
        name: 'consul.txn-limit',
        status: (info.version === 'unknown' && !configured.txnMaxOps) || bytesAssumed ? 'warn' : 'ok',
        message: `${limits.txnMaxOps} ops per txn${configured.txnMaxOps ? ' (from target.limits.txnMaxOps)' : info.version === 'unknown' ? ' (server version unknown: the token may not read /v1/agent/self; set target.limits.txnMaxOps)' : ` (Consul ${info.version})`}, ${limits.txnMaxBytes} bytes per txn, values up to ${limits.maxValueBytes} bytes${bytesAssumed ? ' (Consul\'s defaults, assumed: the token may not read the agent\'s limits; set target.limits.txnMaxBytes and maxValueBytes to the servers\' values if they differ)' : ''}`,
      });
    } catch (err) {
      fail('consul.reachable', err);
    }

    if (consulUp) {
      const acl = await checkAnonymousAccess(connections, timeoutMs, statePaths(config.state.prefix, config.id).scratch);
      result.consul.aclsEnforced = acl.enforced;
      checks.push(acl.check);
      if (connections.target.tls?.verify === false) {
        checks.push({ name: 'consul.tls', status: 'warn', message: 'the Consul server certificate is NOT VERIFIED (CONSUL_HTTP_SSL_VERIFY=false or target.tls.verify: false): whatever answers at this address gets the token and every value', hint: 'Set CONSUL_CACERT (or target.tls.ca) to the CA that signed the server certificate and turn verification back on.' });
      }
      const paths = statePaths(config.state.prefix, config.id);
      const probe = `${paths.scratch}doctor-${randomBytes(6).toString('hex')}`;
      try {
        await consul.putKey(probe, Buffer.from('doctor probe'));
        await consul.deleteKey(probe);
        checks.push({ name: 'consul.write-state', status: 'ok', message: `can write and delete under the state prefix ${paths.root}` });
      } catch (err) {
        fail('consul.write-state', err);
      }
      if (input.mapping) {
        const permissions = await checkPermissions(consul, config, input.mapping);
        if ('error' in permissions) fail('consul.permissions', permissions.error);
        else if (permissions.missing.length > 0) {
          checks.push({
            name: 'consul.permissions',
            status: 'fail',
            code: 'consul_permission_denied',
            message: `the token lacks ${permissions.missing.map((m) => `${m.permission}${m.prefix !== undefined ? ` on prefix ${formatKey(m.prefix)}` : ''}${m.service ? ` on ${m.service.resource} ${JSON.stringify(m.service.name)}` : ''} (${m.for})`).join(', ')}`,
            hint: 'Attach the migrator policy `migrate acl` prints to the token.',
          });
        } else {
          const services = input.mapping.serviceRules.length;
          checks.push({ name: 'consul.permissions', status: 'ok', message: `can write the state prefix and ${input.mapping.copyRules.length} rule target(s), and create sessions${services ? `; can register the services of ${services} service rule(s)` : ''}` });
        }
      }
      if (input.mapping && namesDatacenters(config)) {
        await checkDatacenters(consul, { config, mapping: input.mapping, file: input.configFile, document: undefined, lineCounter: undefined }, etcdClusterId, checks);
      } else try {
        const entry = await consul.readKey(paths.meta);
        if (!entry) {
          checks.push({ name: 'state.meta', status: 'ok', message: `no state for migration "${config.id}" yet` });
        } else {
          const meta = parseStateDocument<StateMeta>(paths.meta, entry.value);
          if (etcdClusterId) {
            checkIdentity(meta, { id: config.id, etcdClusterId, datacenter: result.consul.datacenter ?? '', mappingHash: mappingHash(config) }, { acceptMappingChange: false });
          }
          checks.push({ name: 'state.meta', status: 'ok', message: `migration "${config.id}" recorded ${meta.created} for etcd cluster ${meta.etcdClusterId}; identity and mapping match` });
          checks.push(await checkStateDocuments(consul, paths));
        }
      } catch (err) {
        if (!isMigrateError(err)) throw err;
        checks.push(failedCheck('state.meta', err, stateMetaStatus(err)));
        // A change --accept-mapping-change takes, unless it changes what Consul owns: then copy and dualrun refuse it.
        if (err.code === 'identity_mapping_changed' && input.mapping) {
          await refuseOwnedMappingChanges(consul, paths, config, input.mapping).catch((refused: unknown) => {
            if (!isMigrateError(refused)) throw refused;
            checks.push(failedCheck('state.mapping', refused));
          });
        }
      }
    }
  } finally {
    etcd.close();
    consul.close();
  }
  const failed = checks.filter((c) => c.status === 'fail').map((c) => c.exitCode ?? ExitCode.server);
  result.ok = failed.length === 0;
  result.exitCode = failed.length === 0 ? ExitCode.ok : ([ExitCode.server, ExitCode.usage, ExitCode.refused].find((code) => failed.includes(code)) ?? ExitCode.server);
  return result;
}

/**
 * The migration's other state documents (copy, checkpoint, owners, verify/last, the rules' phases and
 * trips), read as the commands read them: one written by a newer release, or not JSON, is refused by
 * every command that reads it, so it fails doctor too.
 */
async function checkStateDocuments(consul: ConsulTarget, paths: StatePaths): Promise<DoctorCheck> {
  const keys = [paths.copy, paths.checkpoint(), ownersKey(paths), paths.verifyLast, ...(await consul.listKeys(paths.rule(''))), ...(await consul.listKeys(tripsPrefix(paths)))];
  // One read of them all (the ones absent are left out of the answer).
  const entries = await consul.readEntries(keys);
  try {
    for (const entry of entries) parseStateDocument(entry.key, entry.value);
    // The owners document and the rule documents must agree on who owns each rule (state_inconsistent).
    await readOwnership(consul, paths);
  } catch (err) {
    if (!isMigrateError(err)) throw err;
    return failedCheck('state.documents', err);
  }
  return { name: 'state.documents', status: 'ok', message: `${entries.length} state document(s) readable` };
}

/** A check that failed with `err`: its message, code, hint and the exit code the commands give it. */
function failedCheck(name: string, err: MigrateError, status: 'fail' | 'warn' = 'fail'): DoctorCheck {
  return { name, status, message: err.message, code: err.code, hint: err.hint, exitCode: err.exitCode };
}

/**
 * How a failed state.meta check counts: a changed mapping warns (the commands take it with
 * --accept-mapping-change); anything else every command refuses (a server that failed, state of
 * another etcd cluster or datacenter, state a newer release wrote, or state that is not JSON), so it fails doctor.
 */
function stateMetaStatus(err: MigrateError): 'fail' | 'warn' {
  return err.code === 'identity_mapping_changed' ? 'warn' : 'fail';
}

/**
 * An ACL-less Consul is the classic post-cutover exposure: warn loudly when
 * the target takes anonymous writes. The probe key lives in the tool's own
 * scratch folder and is removed at once.
 */
async function checkAnonymousAccess(connections: Connections, timeoutMs: number, scratch: string): Promise<{ enforced: boolean; check: DoctorCheck }> {
  const anonymous = new ConsulHttp({ ...connections.target, token: undefined, tokenFile: undefined, timeoutMs });
  try {
    const self = await anonymous.request({ method: 'GET', path: '/v1/acl/token/self', accept: [401, 403, 404, 500] });
    if (/ACL support disabled/i.test(self.body.toString('utf8'))) {
      return { enforced: false, check: { name: 'consul.acl', status: 'warn', message: 'ACLs are DISABLED on this Consul: anyone who reaches it can read and overwrite every key once applications cut over', hint: 'Enable ACLs with default_policy = "deny" before cutover (https://developer.hashicorp.com/consul/docs/security/acl).' } };
    }
    const probe = `${scratch}doctor-anonymous-${randomBytes(6).toString('hex')}`;
    const path = `/v1/kv/${probe.split('/').map(encodeURIComponent).join('/')}`;
    const put = await anonymous.request({ method: 'PUT', path, body: 'anonymous probe', accept: [401, 403] });
    if (put.status === 200) {
      await anonymous.request({ method: 'DELETE', path, accept: [401, 403] });
      return { enforced: false, check: { name: 'consul.acl', status: 'warn', message: 'ACLs are enabled but ANONYMOUS WRITES SUCCEED (the anonymous token or default_policy allows them)', hint: 'Set default_policy = "deny" and restrict the anonymous token before cutover.' } };
    }
    return { enforced: true, check: { name: 'consul.acl', status: 'ok', message: 'ACLs are enforced: anonymous writes are refused' } };
  } catch (err) {
    if (!isMigrateError(err)) throw err;
    return { enforced: false, check: { name: 'consul.acl', status: 'warn', message: `could not tell whether ACLs are enforced: ${err.message}` } };
  } finally {
    anonymous.close();
  }
}

/**
 * Rules in several datacenters (issue 11): every datacenter they name is
 * known to the agent's WAN federation and answers through it, and its state
 * (if any) belongs to this migration, with the mapping of its own view.
 */
/**
 * Write on the copy rules' ranges (asked without writing): only needed once a
 * rule is cut over (the reverse mirror writes Consul's changes back to etcd),
 * so a read-only user is a warning here; `cutover` refuses it.
 */
async function checkEtcdWrite(etcd: EtcdSource, config: MigrationConfig, checks: DoctorCheck[]): Promise<void> {
  const prefixes = config.rules.filter((r) => r.action === 'copy').map((r) => r.from);
  if (prefixes.length === 0 || checks.some((c) => c.name === 'etcd.read' && c.status !== 'ok')) return;
  const writer = new EtcdWriter(etcd);
  const denied: string[] = [];
  for (const prefix of prefixes) {
    try {
      await writer.probeWrite(Buffer.from(prefix));
    } catch (err) {
      if (!isMigrateError(err)) throw err;
      if (err.code !== 'etcd_permission_denied') {
        checks.push(failedCheck('etcd.write', err));
        return;
      }
      denied.push(prefix);
    }
  }
  checks.push(denied.length > 0
    ? {
        name: 'etcd.write',
        status: 'warn',
        code: 'etcd_permission_denied',
        message: `the etcd user may not write ${denied.map((p) => `prefix ${formatKey(p)}`).join(', ')}: enough for audit, copy, dual-run and verify, but after a cutover the reverse mirror writes Consul's changes back there (\`migrate cutover\` refuses until it may)`,
        hint: 'Before the first cutover, grant the etcd role readwrite on the copy rules\' ranges (`migrate acl` prints it).',
      }
    : { name: 'etcd.write', status: 'ok', message: `can write ${prefixes.length} copy rule range(s) (for the reverse mirror after a cutover)` });
}

async function checkDatacenters(consul: ConsulTarget, loaded: LoadedConfig, etcdClusterId: string | undefined, checks: DoctorCheck[]): Promise<void> {
  const agent = consul.forDatacenter(undefined);
  let known: string[];
  let primary: string;
  try {
    known = await agent.datacenters();
    primary = loaded.config.target.datacenter ?? (await agent.info()).datacenter;
  } catch (err) {
    if (!isMigrateError(err)) throw err;
    checks.push(failedCheck('consul.datacenters', err));
    return;
  }
  const views = datacenterViews(loaded, primary);
  const unknown = views.map((v) => v.datacenter).filter((dc) => !known.includes(dc));
  checks.push(unknown.length === 0
    ? { name: 'consul.datacenters', status: 'ok', message: `the rules write to ${views.map((v) => `${v.datacenter}${v.primary ? ' (primary)' : ''}`).join(', ')}; the agent knows them all` }
    : { name: 'consul.datacenters', status: 'fail', code: 'datacenter_unknown', message: `the agent does not know datacenter ${unknown.join(', ')} (it knows ${known.join(', ')})`, hint: 'Fix the rules\' datacenters: lists, or join the datacenter to the WAN federation.', exitCode: ExitCode.usage });
  for (const view of views.filter((v) => known.includes(v.datacenter))) {
    const name = `state.meta (${view.datacenter})`;
    const paths = statePaths(view.config.state.prefix, view.config.id);
    try {
      const entry = await consul.forDatacenter(view.datacenter).readKey(paths.meta);
      if (!entry) {
        checks.push({ name, status: 'ok', message: `datacenter ${view.datacenter} answers; no state for migration "${view.config.id}" there yet` });
        continue;
      }
      const meta = parseStateDocument<StateMeta>(paths.meta, entry.value);
      if (etcdClusterId) checkIdentity(meta, { id: view.config.id, etcdClusterId, datacenter: view.datacenter, mappingHash: mappingHash(view.config) }, { acceptMappingChange: false });
      checks.push({ name, status: 'ok', message: `datacenter ${view.datacenter} answers; migration "${view.config.id}" recorded there ${meta.created}; identity and mapping match` });
    } catch (err) {
      if (!isMigrateError(err)) throw err;
      checks.push(failedCheck(name, err, stateMetaStatus(err)));
    }
  }
}
