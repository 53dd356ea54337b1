import { UsageError } from '../../errors.js';
import { derivePhase, ownerOf, type PreconditionCheck } from '../../cutover/phase.js';
import { checkLines } from '../../cutover/render.js';
import { readCutoverState } from '../../cutover/state-io.js';
import { statePaths } from '../../state/state.js';
import { DEFAULT_PAGE_KEYS } from '../../stores/types.js';
import type { DatacenterLane } from '../stores.js';
import type { CommandContext, GlobalOptions } from '../context.js';
import { confirmationPrompt } from '../prompt.js';
import { TOOL_VERSION } from '../version.js';
import { parseDuration } from './audit-flags.js';

/** Flags `cutover`, `rollback` and `finalize` share (the last two, finalize's own). */
export interface TransitionFlags {
  rule: string[];
  yes?: boolean;
  acknowledgeTrips?: boolean;
  catchUpTimeout?: string;
  drain?: string;
  deleteEtcd?: boolean;
  exportEtcd?: string;
}

/** `--drain` of cutover and rollback: how long applications' writes stay paused before the flip. */
export const DRAIN_OPTION = ['--drain <duration>', 'how long applications hold their writes before the flip, so writes in flight to the old owner land and are mirrored first', '2s'] as const;

export function drainMs(options: TransitionFlags): number {
  return parseDuration('--drain', options.drain) ?? 2_000;
}

/**
 * DESIGN §4: off a terminal these commands need `--yes` (exit 2 naming it),
 * checked once the rules named are known to be migration.yaml's (a command
 * line wrong whatever the answer says so first, not "pass --yes"), before
 * either server is asked anything; on a terminal the user types the rule
 * names once every precondition has passed.
 */
function requireConfirmation(ctx: CommandContext, command: string, options: TransitionFlags): ((rules: string[], checks: PreconditionCheck[]) => Promise<boolean>) | undefined {
  if (options.yes) return undefined;
  if (command === 'finalize' && options.deleteEtcd && !options.exportEtcd) {
    throw new UsageError('confirmation_required', 'finalize --delete-etcd without --export-etcd deletes etcd keys with no copy on disk.', { hint: 'Pass --export-etcd <file> as well, or --yes to confirm.' });
  }
  const what = command === 'finalize' ? 'stops mirroring the rules for good' : 'changes which store applications write to';
  const ask = confirmationPrompt(ctx, `migrate ${command} ${what}`, 'Pass --yes to confirm (check `migrate status` first).');
  return (rules, checks) => {
    // What the command found, read before the answer (the result repeats it).
    ctx.log([`${command} of ${rules.map((r) => `rule ${r}`).join(', ')}: every precondition passed`, ...checkLines(checks)].join('\n'));
    return ask(`Type the rule name${rules.length > 1 ? 's, separated by spaces,' : ''} to ${command} (${rules.join(' ')}): `, rules.join(' '));
  };
}

/**
 * With rules in several datacenters (issue 11), a transition works in one:
 * `--datacenter`, else the one datacenter every named rule is copied to. A
 * rule is owned by Consul in one datacenter at a time (etcd stays the hub
 * that keeps the others in step: the reverse mirror writes the owner's
 * changes to etcd, the dual-run replicates them on), and finalizing a rule
 * still copied to other datacenters would stop their replication: both are
 * preconditions that fail, checked against the other datacenters' state.
 */
function pickLane(lanes: DatacenterLane[], rules: string[], flag: string | undefined): DatacenterLane {
  if (lanes.length === 1) return lanes[0]!;
  const homes = (rule: string) => lanes.filter((l) => l.rules.includes(rule) && l.mapping.copyRules.some((r) => r.name === rule)).map((l) => l.datacenter);
  const lane = flag ? lanes.find((l) => l.datacenter === flag) : undefined;
  if (flag && !lane) {
    throw new UsageError('datacenter_unknown', `--datacenter ${flag}: migration.yaml writes nothing to that datacenter (its datacenters: ${lanes.map((l) => l.datacenter).join(', ')}).`, { hint: 'Name one of those datacenters.' });
  }
  if (lane) {
    const absent = rules.filter((r) => lanes.some((l) => l.mapping.copyRules.some((c) => c.name === r)) && !homes(r).includes(lane.datacenter));
    if (absent.length > 0) {
      throw new UsageError('rule_unknown', `--rule ${absent.join(', ')}: not copied to datacenter ${lane.datacenter} (${absent.map((r) => `${r}: ${homes(r).join(', ')}`).join('; ')}).`, { hint: 'Name the datacenter the rule is copied to with --datacenter.' });
    }
    return lane;
  }
  const candidates = new Set(rules.flatMap(homes));
  if (candidates.size === 1) return lanes.find((l) => l.datacenter === [...candidates][0])!;
  throw new UsageError('datacenter_required', `The rules are copied to several datacenters (${rules.map((r) => `${r}: ${homes(r).join(', ') || 'none'}`).join('; ')}); name the one to work in.`, {
    hint: 'Pass --datacenter <dc>: a rule is cut over, rolled back and finalized in one datacenter at a time.',
  });
}

function otherDatacenters(lanes: DatacenterLane[], lane: DatacenterLane, command: 'cutover' | 'rollback' | 'finalize', statePrefix: string, id: string, now: () => Date) {
  if (lanes.length === 1 || command === 'rollback') return undefined;
  return async (rule: string): Promise<PreconditionCheck | undefined> => {
    const others = lanes.filter((l) => l !== lane && l.rules.includes(rule) && l.mapping.copyRules.some((r) => r.name === rule));
    if (others.length === 0) return { name: 'other datacenters', ok: true, detail: `rule ${rule} is copied to ${lane.datacenter} only` };
    if (command === 'finalize') {
      return { name: 'other datacenters', ok: false, detail: `rule ${rule} is also copied to ${others.map((l) => l.datacenter).join(', ')}, which get its changes through etcd; finalizing it here would stop that. Remove those datacenters from the rule's datacenters (and run the dual-run with --accept-mapping-change) first, or keep the rule cut over` };
    }
    const owned: string[] = [];
    for (const other of others) {
      const state = await readCutoverState(other.target, statePaths(statePrefix, id));
      const phase = derivePhase(rule, { doc: state.docs.get(rule)?.doc, copy: state.copy, checkpoint: state.checkpoint, verify: state.verify, nowMs: now().getTime() });
      if (ownerOf(phase) === 'consul') owned.push(`${other.datacenter} (${phase})`);
    }
    return owned.length === 0
      ? { name: 'other datacenters', ok: true, detail: `etcd owns rule ${rule} in ${others.map((l) => l.datacenter).join(', ')}: they keep getting its changes through etcd` }
      : { name: 'other datacenters', ok: false, detail: `Consul already owns rule ${rule} in ${owned.join(', ')}: a rule is cut over in one datacenter at a time (etcd keeps the others in step); roll it back there first` };
  };
}

/** Opens the configuration and stores (in the datacenter the transition works in), and builds the verify runner these commands use. */
export async function openForTransition(ctx: CommandContext, options: TransitionFlags & GlobalOptions, command: 'cutover' | 'rollback' | 'finalize') {
  const { resolveConnections } = await import('../../config/connections.js');
  const { openStores, openDatacenters, datacenterFlag } = await import('../stores.js');
  const { runVerify } = await import('../../verify/verify.js');
  const { createValueHasher } = await import('../../report/hash.js');
  const { EtcdWriter } = await import('../../stores/etcd-writer.js');
  const { operator } = await import('../../cutover/state-io.js');
  const { ruleArgument } = await import('../../mapping/datacenters.js');
  const { sleep } = await import('../../stores/consul-http.js');
  const { checkRuleNames } = await import('../../cutover/cutover.js');
  // A command line that names no rule is wrong whatever migration.yaml says: said first.
  if (options.rule.length === 0) throw new UsageError('rule_missing', 'Name at least one rule with --rule <name>.', { hint: '`migrate status` lists the rules and their phases.' });
  const loaded = await ctx.loadConfig(options.config, true);
  checkRuleNames(loaded.mapping, options.rule);
  // Keep and service rules alone are refused with their reason whatever the answer: asking first only led to that refusal.
  const changes = options.rule.some((name) => loaded.mapping.rules.find((r) => r.name === name)?.action === 'copy');
  const confirm = changes ? requireConfirmation(ctx, command, options) : undefined;
  const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd, loaded.file);
  const stores = openStores(connections, loaded.config);
  try {
    const lanes = await openDatacenters(loaded, stores.target);
    const lane = pickLane(lanes, options.rule, datacenterFlag(connections));
    const writer = new EtcdWriter(stores.source);
    /** A verify of all copy rules (recorded) or of one rule (not recorded), in the lane's datacenter. */
    const verify = (rule?: string) => {
      const mapping = rule ? { ...lane.mapping, copyRules: lane.mapping.copyRules.filter((r) => r.name === rule), serviceRules: lane.mapping.serviceRules.filter((r) => r.name === rule) } : lane.mapping;
      return runVerify({ source: stores.source, target: lane.target, config: lane.config, mapping, ...(lanes.length > 1 ? { datacenter: lane.datacenter } : {}) }, {
        rounds: 3, roundPauseMs: 1000, waitTimeoutMs: 60_000, maxDiffs: 100, budgets: {}, record: !rule, readBack: 0, pageKeys: DEFAULT_PAGE_KEYS,
        signal: ctx.signal, now: () => new Date(), hasher: createValueHasher(), toolVersion: TOOL_VERSION,
        onProgress: (event) => {
          if (event.type === 'warning') ctx.warn(event.message);
        },
      });
    };
    const now = () => new Date();
    const elsewhere = otherDatacenters(lanes, lane, command, loaded.config.state.prefix, loaded.config.id, now);
    const common = {
      // `--rule a --rule a` is rule a once.
      rules: [...new Set(options.rule)],
      now,
      by: operator(ctx.io.env),
      cwd: ctx.io.cwd,
      catchUpTimeoutMs: parseDuration('--catch-up-timeout', options.catchUpTimeout) ?? 10_000,
      acknowledgeTrips: Boolean(options.acknowledgeTrips),
      // Cut short by an interrupt (the drain): the transition then stops before its next change.
      sleep: (ms: number) => sleep(ms, ctx.signal),
      signal: ctx.signal,
      ...(elsewhere ? { elsewhere } : {}),
    };
    /** A rule as the printed next commands take it: with --datacenter when it is copied to several. */
    const ruleArg = (rule: string) => ruleArgument(loaded.config, rule, lane.datacenter);
    return { loaded, stores, writer, verify, common, ruleArg, ...(confirm ? { confirm } : {}), deps: { source: stores.source, target: lane.target, config: lane.config, mapping: lane.mapping, writer } };
  } catch (err) {
    stores.close();
    throw err;
  }
}
