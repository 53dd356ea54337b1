import { accessSync, appendFileSync, constants, existsSync } from 'node:fs';
import { isDirectory } from '../../export/whole-file.js';
import { basename, dirname, resolve } from 'node:path';
import { Command } from 'commander';
import { ExitCode, UsageError, isMigrateError } from '../../errors.js';
import type { DatacenterVerify } from '../../verify/render.js';
import type { GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';
import type { ProgressItem } from '../../report/progress.js';
import { TOOL_VERSION } from '../version.js';
import { collect, MAX_PAGE_KEYS, parseDuration, wholeNumber } from './audit-flags.js';
import { DEFAULT_PAGE_KEYS, PAGE_KEYS_HELP } from '../../stores/types.js';

interface VerifyFlags {
  rounds?: string;
  roundPause?: string;
  waitTimeout?: string;
  maxDiffs?: string;
  allow: string[];
  record: boolean;
  readBack?: string;
  pageKeys?: string;
  summaryFile?: string;
}

/** `--allow rule=N` (repeatable) → budgets per rule. */
export function parseBudgets(values: readonly string[]): Record<string, number> {
  const budgets: Record<string, number> = {};
  for (const value of values) {
    const match = /^([^=]+)=(\d+)$/.exec(value.trim());
    if (!match) throw new UsageError('flag_invalid', `--allow takes rule=N (a rule name and a whole number), not ${JSON.stringify(value)}.`, { hint: 'Pass --allow app=5 to tolerate up to 5 persistent differences in rule app.' });
    budgets[match[1]!.trim()] = Number(match[2]);
  }
  return budgets;
}

function parseReadBack(text: string | undefined): number | 'all' {
  if (text === 'all') return 'all';
  return wholeNumber('--read-back', text, 100, 0);
}

export function registerVerify({ add }: CommandRegistrar): void {
  add(
    new Command('verify')
      .description('check parity of etcd and Consul at a consistent cut, both directions, per copy rule (KV keys) and per service rule (catalog instances); re-checks differences over rounds so writes in flight settle (reads only; records the summary in verify/last)')
      .option('--rounds <n>', 'rounds in all; keys and service instances that differ are re-read on both sides in each later round', '3')
      .option('--round-pause <duration>', 'pause before each later round, letting the dual-run catch up', '2s')
      .option('--wait-timeout <duration>', 'longest wait, per round, for a running dual-run\'s checkpoint to reach the etcd revision (then exit 4)', '60s')
      .option('--max-diffs <n>', 'differences listed in the report (all are counted)', '1000')
      .option('--allow <rule=N>', 'tolerate up to N persistent differences in a copy or service rule, reported as within budget (repeatable)', collect, [])
      .option('--no-record', 'do not write the summary to the verify/last state document (the one write verify does)')
      .option('--read-back <n|all>', 'keys also read through GET /v1/kv/<key>, as applications read them: n in all, shared among the copy rules by size (at least one each)', '100')
      .option('--page-keys <n>', `${PAGE_KEYS_HELP}; also the comparison chunk`, String(DEFAULT_PAGE_KEYS))
      .option('--summary-file <file>', 'also append the markdown report to this file (e.g. "$GITHUB_STEP_SUMMARY"), from the same run')
      .addHelpText('after', `
Exit codes: 0 parity (or every difference within its --allow budget), 1 drift, 2 usage or configuration,
3 a server failed, 4 no consistent cut in time (the dual-run's checkpoint did not reach the etcd revision).

With a dual-run running (its checkpoint, by: dualrun, updated within 20 s or moving), verify waits until the
checkpoint reaches the etcd revision it reads; without one it compares at once, and any change since the copy is drift.

Service rules compare the instances their etcd keys make with the rule's instances in Consul's catalog, on every
node (the tool's meta etcd-migrate-id and etcd-migrate-rule): missing, extra (or a duplicate id on another node),
instance (the fields that differ are named, never their values), check (TTL check present without a lease, or
absent with one) and check-critical (critical while the etcd lease is alive). Keys that make no instance count
as unmappable, not drift. The token needs service:read and node:read; an answer Consul filtered by ACLs is refused.

Examples:
  migrate verify
  migrate verify --format junit --summary-file "$GITHUB_STEP_SUMMARY" > verify.xml
  migrate verify --format json --max-diffs 100 --allow legacy=3
  migrate verify --rounds 1 --no-record
`),
    ['text', 'json', 'markdown', 'junit'],
    async (ctx, options: VerifyFlags & GlobalOptions) => {
      const rounds = wholeNumber('--rounds', options.rounds, 3, 1, 100);
      const roundPauseMs = parseDuration('--round-pause', options.roundPause) ?? 2_000;
      const waitTimeoutMs = parseDuration('--wait-timeout', options.waitTimeout) ?? 60_000;
      const maxDiffs = wholeNumber('--max-diffs', options.maxDiffs, 1000, 0);
      const readBack = parseReadBack(options.readBack);
      const pageKeys = wholeNumber('--page-keys', options.pageKeys, DEFAULT_PAGE_KEYS, 1, MAX_PAGE_KEYS);
      const budgets = parseBudgets(options.allow);
      const { resolveConnections } = await import('../../config/connections.js');
      const { openStores, openDatacenters, datacenterFlag } = await import('../stores.js');
      const { namesDatacenters } = await import('../../mapping/datacenters.js');
      const { runVerify } = await import('../../verify/verify.js');
      const { renderVerify, renderVerifyError, renderVerifyDatacenters, datacentersVerdict } = await import('../../verify/render.js');
      const { createValueHasher } = await import('../../report/hash.js');
      const { createProgressView } = await import('../../report/progress.js');
      const summaryFile = options.summaryFile ? summaryTarget(resolve(ctx.io.cwd, options.summaryFile)) : undefined;
      const view = createProgressView(ctx);
      const progress = { title: 'verifying', items: [] as ProgressItem[], retries: 0, startedAt: Date.now() };
      let migration = '(no configuration)';
      let close = () => {};
      try {
        const loaded = await ctx.loadConfig(options.config, true);
        migration = loaded.config.id;
        const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd, loaded.file);
        const stores = openStores(connections, loaded.config);
        close = stores.close;
        const { preflightConsul } = await import('../../doctor/preflight.js');
        const lanes = await openDatacenters(loaded, stores.target, datacenterFlag(connections));
        // With rules naming datacenters, reports have one part per datacenter, even for the one --datacenter picks.
        const several = namesDatacenters(loaded.config);
        const hasher = createValueHasher();
        const entries: DatacenterVerify[] = [];
        for (const lane of lanes) {
          progress.items = [];
          const prefix = several ? `${lane.datacenter}: ` : '';
          progress.title = `${prefix}verifying`;
          try {
            await preflightConsul(lane.target, lane.config, lane.mapping, 'verify', { writeTargets: false, writeState: options.record ? 'verify' : false, sessions: false, strandedReads: true });
            const result = await runVerify(
              { source: stores.source, target: lane.target, config: lane.config, mapping: lane.mapping, ...(several ? { datacenter: lane.datacenter } : {}) },
              {
                rounds, roundPauseMs, waitTimeoutMs, maxDiffs, budgets, readBack, pageKeys,
                record: options.record,
                signal: ctx.signal,
                now: () => new Date(),
                hasher,
                toolVersion: TOOL_VERSION,
                onProgress: (event) => {
                  if (event.type === 'start') {
                    // The cut is taken (a wait for the dual-run is over): round 1 reads every key.
                    progress.title = `${prefix}verifying at etcd revision ${event.revision}`;
                    progress.items = event.rules.map((r) => ({ name: r.name, total: r.keys, done: 0 }));
                  } else if (event.type === 'progress') {
                    const item = progress.items.find((i) => i.name === event.rule);
                    if (item) item.done = event.keysDone;
                  } else if (event.type === 'round') {
                    progress.title = `${prefix}round ${event.round}: re-checking ${event.pending} key(s)`;
                  } else if (event.type === 'waiting') {
                    progress.title = `${prefix}waiting for the dual-run checkpoint (${event.checkpoint ?? 'none'}) to reach etcd revision ${event.revision}`;
                  } else {
                    view.warn(`${prefix}${event.message}`);
                    return;
                  }
                  view.update(progress);
                },
              },
            );
            entries.push({ datacenter: lane.datacenter, result });
          } catch (err) {
            // A datacenter that does not answer is reported as not verified; the others are still verified (issue 11).
            if (!several || !isMigrateError(err) || err.exitCode !== ExitCode.server) throw err;
            view.warn(`${lane.datacenter}: not verified: ${err.message}`);
            entries.push({ datacenter: lane.datacenter, error: err });
          }
        }
        await view.close();
        if (!several) {
          const result = entries[0]!.result!;
          ctx.result(renderVerify(result, ctx.format));
          if (summaryFile) appendSummary(ctx, summaryFile, renderVerify(result, 'markdown'));
          return result.clean ? ExitCode.ok : ExitCode.findings;
        }
        ctx.result(renderVerifyDatacenters(migration, entries, ctx.format));
        if (summaryFile) appendSummary(ctx, summaryFile, renderVerifyDatacenters(migration, entries, 'markdown'));
        const verdict = datacentersVerdict(entries);
        return verdict === 'ok' ? ExitCode.ok : verdict === 'drift' ? ExitCode.findings : ExitCode.server;
      } catch (err) {
        // CI reads the artifact: a verify that could not finish (configuration, servers, no cut) still leaves
        // a JUnit/markdown document naming the error; the CLI entry prints it on stderr and exits with its code.
        await view.close();
        const artifact = renderVerifyError(err, ctx.format, migration);
        if (artifact) ctx.result(artifact);
        if (summaryFile) appendSummary(ctx, summaryFile, renderVerifyError(err, 'markdown', migration)!);
        throw err;
      } finally {
        await view.close();
        close();
      }
    },
  );
}

/**
 * The --summary-file, checked before anything is read: `-` is no file name, its directory exists, and it is a
 * file (or a new one) this process may write. Found only after the report, a second document followed it on
 * stdout and the verdict (drift, exit 1) became exit 2.
 */
function summaryTarget(file: string): string {
  if (basename(file) === '-') throw new UsageError('flag_invalid', '--summary-file - would write a file named "-": it appends to a file.', { hint: 'Name a file, such as "$GITHUB_STEP_SUMMARY".' });
  if (!isDirectory(dirname(file))) throw new UsageError('file_unwritable', `Cannot write ${file} (--summary-file): ${dirname(file)} is not a directory.`, { hint: 'Check the path, or create the directory first.' });
  if (isDirectory(file)) throw new UsageError('file_unwritable', `Cannot write ${file} (--summary-file): it is a directory.`, { hint: 'Name a file in it, such as summary.md.' });
  try {
    accessSync(existsSync(file) ? file : dirname(file), constants.W_OK);
  } catch (err) {
    throw new UsageError('file_unwritable', `Cannot write ${file} (--summary-file): ${(err as Error).message}.`, { hint: 'Check the file\'s and its directory\'s permissions, or pass another path.' });
  }
  return file;
}

/**
 * Appends the markdown summary after the report. Its path was checked first, so a failure here is the disk's
 * (full, gone): said on stderr, and the verdict's exit code stands (the report is the one document on stdout).
 */
function appendSummary(ctx: { warn(text: string): void }, file: string, text: string): void {
  try {
    appendFileSync(file, text);
  } catch (err) {
    ctx.warn(`the markdown summary was not written to ${file} (--summary-file): ${(err as Error).message}; the report above is complete`);
  }
}
