import type { MigrationConfig } from '../config/load.js';
import { isMigrateError } from '../errors.js';
import type { Mapping } from '../mapping/mapping.js';
import { countRuleKeys } from '../mapping/route.js';
import { ruleArgument } from '../mapping/datacenters.js';
import { checkIdentity, mappingHash, readState, statePaths, type StateMeta } from '../state/state.js';
import type { SourceReader, TargetStore } from '../stores/types.js';
import { derivePhase, dualRunRunning, formatAge, nextStep, openTrips, ownerOf, type RuleOwner, type RulePhase, type WritesPause } from './phase.js';
import { readCutoverState } from './state-io.js';
import { lockHolder } from '../dualrun/leader.js';
import { migrationsCopyingTheSame } from '../state/migrations.js';
import { runningCopy } from '../copy/lock.js';
import { META_RULE } from '../services/registration.js';

/** One rule's line in `migrate status`. */
export interface RuleStatusLine {
  name: string;
  action: 'copy' | 'keep' | 'service';
  from: string;
  to: string | null;
  /** null for keep and service rules (they have no phase: keys stay on etcd; registrations follow etcd into the catalog). */
  phase: RulePhase | null;
  owner: RuleOwner;
  /** Whether the phase is written in `rules/<name>` (else derived from the copy, checkpoint and verify state). */
  recorded: boolean;
  /** Service rules: `consul` counts the rule's catalog instances. */
  /** `etcd` is null for a keep rule whose range the etcd role may not read (the role `migrate acl` prints grants none). */
  keys: { etcd: number | null; consul: number | null };
  verify: { status: string; differences: number; at: string; ageSeconds: number } | null;
  lateWrites: number;
  guardTrips: number;
  /** When the phase last changed, and by whom. */
  changed: { at: string; by: string } | null;
  /** Applications' writes to the rule are held by a cutover or rollback in progress (or one that died mid-way). */
  writesPaused: WritesPause | null;
  next: string;
}

export interface StatusResult {
  migration: string;
  statePrefix: string;
  /** Whether any state exists in Consul (a copy has started). */
  started: boolean;
  etcdRevision: number;
  /** `leader`: the `host:pid` holding the dual-run's leader lock, null when none holds it. */
  dualRun: {
    running: boolean; checkpoint: number | null; by: 'copy' | 'dualrun' | null; updated: string | null; lagRevisions: number | null; leader: string | null;
    /** etcd went back in time (restored from a backup): its revision is below the checkpoint now, or a dual-run found it so (`found`) and refuses since. */
    etcdWentBack: { etcdRevision: number; found: string | null } | null;
  };
  /** `tolerated`: differences the last verify let pass within `--allow` budgets (a cutover needs parity). */
  verify: { at: string; ageSeconds: number; clean: boolean; revision: number; tolerated: number } | null;
  /** migration.yaml's mapping is not the one the migration recorded: the dual-run and copy refuse it until told to adopt it. */
  mappingChanged: boolean;
  /** Rules cut over (Consul owns their data, applications write it there) that migration.yaml no longer names as copy rules. */
  cutOverNotInFile: string[];
  /** With no state of this migration: the other migrations under the state prefix that copy the same etcd prefixes (an id edited since the copy?). */
  sameDataIn: string[];
  rules: RuleStatusLine[];
}

/** A pause a cutover or rollback set: it lifts it when it ends, unless it died (SIGKILL, a lost host) on the way. */
function pausedStep(rule: string, pause: WritesPause, ageSeconds: number): string {
  const undo = pause.for === 'cutover' ? 'rollback' : 'cutover';
  return `applications' writes to the rule are PAUSED by a ${pause.for} started by ${pause.by} ${formatAge(ageSeconds * 1000)} ago; if that command no longer runs, run \`migrate ${pause.for} --rule ${rule}\` again to finish the move, or \`migrate ${undo} --rule ${rule}\` to abandon it`;
}

/** `migrate status` (reads only). */
export async function runStatus(deps: { source: SourceReader; target: TargetStore; config: MigrationConfig; mapping: Mapping }, options: { now: () => Date; maxVerifyAgeMs: number; datacenter?: string }): Promise<StatusResult> {
  const { source, target, config, mapping } = deps;
  const ruleArg = (name: string) => ruleArgument(config, name, options.datacenter);
  const paths = statePaths(mapping.statePrefix, config.id);
  const [status, meta, state, info, lock, copying] = await Promise.all([source.status(), readState<StateMeta>(target, paths.meta), readCutoverState(target, paths), target.info(), target.readKey(paths.leader), runningCopy(target, config)]);
  // As verify: figures of another etcd cluster (or datacenter) than the migration's would compare unrelated stores.
  const mappingChanged = checkIdentity(meta, { id: config.id, etcdClusterId: status.clusterId, datacenter: info.datacenter, mappingHash: mappingHash(config) }, { acceptMappingChange: true }) === 'mapping-changed';
  const nowMs = options.now().getTime();
  const running = dualRunRunning(state.checkpoint, nowMs);
  const checkpoint = state.checkpoint?.revision ?? null;
  // Read at the same moment as the checkpoint, etcd's revision can predate it (a running dual-run moved it meanwhile):
  // read again before taking etcd to be behind it (restored from a backup).
  const etcdRevision = checkpoint !== null && status.revision < checkpoint ? (await source.status()).revision : status.revision;
  // No state of this migration, but another copies the same etcd prefixes: an id edited since the copy?
  const sameDataIn = meta ? [] : await migrationsCopyingTheSame(target, config);
  const etcdWentBack = state.checkpoint?.rewound ? { etcdRevision: state.checkpoint.rewound.etcdRevision, found: state.checkpoint.rewound.found } : checkpoint !== null && etcdRevision < checkpoint ? { etcdRevision, found: null } : null;
  const ageOf = (at: string) => Math.max(0, Math.round((nowMs - Date.parse(at)) / 1000));
  const rules: RuleStatusLine[] = [];
  const instances = mapping.serviceRules.length > 0 ? await target.listServiceInstances(config.id, 'catalog') : [];
  for (const rule of mapping.rules) {
    if (rule.action === 'keep') {
      const kept = await countRuleKeys(source, mapping, rule, status.revision).catch((err: unknown) => {
        if (isMigrateError(err) && err.code === 'etcd_permission_denied') return null;
        throw err;
      });
      rules.push({ name: rule.name, action: 'keep', from: rule.from, to: null, phase: null, owner: 'etcd', recorded: false, keys: { etcd: kept, consul: null }, verify: null, lateWrites: 0, guardTrips: 0, changed: null, writesPaused: null, next: 'none: stays on etcd' });
      continue;
    }
    const etcdKeys = await countRuleKeys(source, mapping, rule, status.revision);
    if (rule.action === 'service') {
      const v = state.verify?.rules[rule.name];
      rules.push({
        name: rule.name, action: 'service', from: rule.from, to: null, phase: null, owner: 'etcd', recorded: false,
        keys: { etcd: etcdKeys, consul: instances.filter((i) => i.meta[META_RULE] === rule.name).length },
        verify: v && state.verify ? { status: v.status, differences: v.differences, at: state.verify.at, ageSeconds: ageOf(state.verify.at) } : null,
        lateWrites: 0, guardTrips: 0, changed: null, writesPaused: null,
        next: !running ? 'run `migrate dualrun` to keep the catalog in step (and the TTL checks passing)'
          : v?.status === 'drift' ? `the last verify found ${v.differences} difference(s) in the catalog: \`migrate verify\` lists them; a difference that stays is mended by \`migrate copy\` (or a restart of the dual-run)`
          : 'none: the dual-run keeps the catalog in step with etcd; switch the registering agents to Consul, then drop the rule',
      });
      continue;
    }
    const doc = state.docs.get(rule.name)?.doc;
    const phase = derivePhase(rule.name, { doc, copy: state.copy, checkpoint: state.checkpoint, verify: state.verify, nowMs });
    const v = state.verify?.rules[rule.name];
    const verify = v && state.verify ? { status: v.status, differences: v.differences, at: state.verify.at, ageSeconds: ageOf(state.verify.at) } : null;
    const trips = state.trips.get(rule.name)?.doc;
    const last = doc?.history[doc.history.length - 1];
    rules.push({
      name: rule.name,
      action: 'copy',
      from: rule.from,
      to: rule.to,
      phase,
      owner: ownerOf(phase),
      recorded: Boolean(doc),
      keys: { etcd: etcdKeys, consul: (await target.listKeys(rule.to)).length },
      verify,
      lateWrites: trips?.lateWrites.count ?? 0,
      guardTrips: trips?.guardTrips.count ?? 0,
      changed: last ? { at: last.at, by: last.by } : null,
      writesPaused: doc?.writesPaused ?? null,
      next: sameDataIn.length > 0 ? `put migration.yaml's id back to ${sameDataIn.map((id) => `"${id}"`).join(' or ')}, whose state this is (copy refuses the prefixes another migration copies)` : doc?.writesPaused ? pausedStep(ruleArg(rule.name), doc.writesPaused, ageOf(doc.writesPaused.since)) : nextStep(ruleArg(rule.name), phase, { running, verifyClean: verify ? verify.status === 'parity' : undefined, tolerated: verify?.status === 'within-budget' ? verify.differences : undefined, verifyAgeMs: verify ? verify.ageSeconds * 1000 : undefined, maxVerifyAgeMs: options.maxVerifyAgeMs, trips: openTrips(trips), guardTrips: trips?.guardTrips.count ?? 0, copyInterrupted: Boolean(state.copy && !state.copy.completed), ...(copying ? { copyRunning: copying } : {}), ...(lock?.session ? { rebaselining: lockHolder(lock.value) ?? 'unknown' } : {}), dualRunCheckpoint: state.checkpoint?.by === 'dualrun', mappingChanged, etcdWentBack: etcdWentBack !== null }),
    });
  }
  return {
    migration: config.id,
    statePrefix: paths.root,
    started: Boolean(meta),
    etcdRevision,
    dualRun: {
      running, checkpoint, by: state.checkpoint?.by ?? null, updated: state.checkpoint?.updated ?? null, lagRevisions: checkpoint === null ? null : Math.max(0, etcdRevision - checkpoint), leader: lock?.session ? (lockHolder(lock.value) ?? 'unknown') : null,
      etcdWentBack,
    },
    verify: state.verify
      ? { at: state.verify.at, ageSeconds: ageOf(state.verify.at), clean: state.verify.clean, revision: state.verify.revision, tolerated: Object.values(state.verify.rules).reduce((n, r) => n + (r.status === 'within-budget' ? r.differences : 0), 0) }
      : null,
    mappingChanged,
    sameDataIn,
    cutOverNotInFile: [...state.docs.values()].map((d) => d.doc).filter((doc) => doc.phase === 'cutover' && !mapping.copyRules.some((r) => r.name === doc.rule)).map((doc) => doc.rule),
    rules,
  };
}
