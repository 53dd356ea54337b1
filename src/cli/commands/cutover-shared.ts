import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline/promises';
import { UsageError } from '../../errors.js';
import type { CommandContext, GlobalOptions } from '../context.js';
import { TOOL_VERSION } from '../version.js';
import { parseDuration } from './audit-flags.js';

/** Flags `cutover`, `rollback` and `finalize` share. */
export interface TransitionFlags {
  rule: string[];
  yes?: boolean;
  acknowledgeTrips?: boolean;
  catchUpTimeout?: string;
  drain?: string;
}

/** `--drain` of cutover and rollback: how long applications' writes stay paused before the flip. */
export const DRAIN_OPTION = ['--drain <duration>', 'how long applications hold their writes before the flip, so writes in flight to the old owner land and are mirrored first', '2s'] as const;

export function drainMs(options: TransitionFlags): number {
  return parseDuration('--drain', options.drain) ?? 2_000;
}

/**
 * DESIGN §4: off a terminal these commands need `--yes` (exit 2 naming it),
 * checked before anything is read; on a terminal the user types the rule
 * names once every precondition has passed.
 */
export function requireConfirmation(ctx: CommandContext, command: string, options: TransitionFlags): ((rules: string[]) => Promise<boolean>) | undefined {
  if (options.yes) return undefined;
  if (!ctx.interactive) {
    throw new UsageError('confirmation_required', `migrate ${command} changes which store applications write to and needs confirmation; there is no terminal to ask on.`, {
      hint: `Pass --yes to confirm (check \`migrate status\` first).`,
    });
  }
  return async (rules) => {
    const rl = createInterface({ input: process.stdin, output: process.stderr });
    try {
      const answer = await rl.question(`Type the rule name${rules.length > 1 ? 's, separated by spaces,' : ''} to ${command} (${rules.join(' ')}): `);
      return answer.trim().split(/\s+/).join(' ') === rules.join(' ');
    } finally {
      rl.close();
    }
  };
}

/** Opens the configuration and stores, and builds the verify runner these commands use. */
export async function openForTransition(ctx: CommandContext, options: TransitionFlags & GlobalOptions) {
  const { loadConfig } = await import('../../config/load.js');
  const { resolveConnections } = await import('../../config/connections.js');
  const { openStores } = await import('../stores.js');
  const { runVerify } = await import('../../verify/verify.js');
  const { createValueHasher } = await import('../../report/hash.js');
  const { EtcdWriter } = await import('../../stores/etcd-writer.js');
  const { operator } = await import('../../cutover/state-io.js');
  const loaded = loadConfig({ configFlag: options.config, env: ctx.io.env, cwd: ctx.io.cwd, required: true });
  const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd);
  const stores = openStores(connections, loaded.config);
  const writer = new EtcdWriter(stores.source.client, (err, what) => stores.source.toError(err, what));
  /** A verify of all copy rules (recorded) or of one rule (not recorded). */
  const verify = (rule?: string) => {
    const mapping = rule ? { ...loaded.mapping, copyRules: loaded.mapping.copyRules.filter((r) => r.name === rule), serviceRules: loaded.mapping.serviceRules.filter((r) => r.name === rule) } : loaded.mapping;
    return runVerify({ source: stores.source, target: stores.target, config: loaded.config, mapping }, {
      rounds: 3, roundPauseMs: 1000, waitTimeoutMs: 60_000, maxDiffs: 100, budgets: {}, record: !rule, readBack: 0, pageKeys: 10_000,
      signal: ctx.signal, now: () => new Date(), hasher: createValueHasher(), toolVersion: TOOL_VERSION,
      onProgress: (event) => {
        if (event.type === 'warning') ctx.warn(event.message);
      },
    });
  };
  const common = {
    rules: options.rule,
    now: () => new Date(),
    by: operator(ctx.io.env),
    cwd: ctx.io.cwd,
    catchUpTimeoutMs: parseDuration('--catch-up-timeout', options.catchUpTimeout) ?? 10_000,
    acknowledgeTrips: Boolean(options.acknowledgeTrips),
    sleep: (ms: number) => new Promise<void>((r) => setTimeout(r, ms)),
  };
  return { loaded, stores, writer, verify, common, deps: { source: stores.source, target: stores.target, config: loaded.config, mapping: loaded.mapping, writer }, writeFile: (file: string, data: Buffer) => writeFileSync(resolve(ctx.io.cwd, file), data, { mode: 0o600, flag: 'wx' }) };
}
