import { Command, Option } from 'commander';
import { ExitCode, RefusedError, ServerError, UsageError, isMigrateError } from '../../errors.js';
import type { CopyResult } from '../../copy/copy.js';
import type { GlobalOptions } from '../context.js';
import { confirmationPrompt } from '../prompt.js';
import type { CommandRegistrar } from '../main.js';
import type { ProgressItem } from '../../report/progress.js';
import { TOOL_VERSION } from '../version.js';
import { MAX_PAGE_KEYS, wholeNumber } from './audit-flags.js';
import { DEFAULT_PAGE_KEYS, PAGE_KEYS_HELP } from '../../stores/types.js';

interface CopyFlags {
  dryRun?: boolean;
  showOps?: boolean;
  resume?: boolean;
  onConflict: 'overwrite' | 'skip' | 'fail';
  deleteExtraneous?: boolean;
  allowMassDelete?: boolean;
  acceptMappingChange?: boolean;
  acceptClusterChange?: boolean;
  yes?: boolean;
  rate?: string;
  concurrency: string;
  pageKeys: string;
}

export function registerCopy({ add }: CommandRegistrar): void {
  add(
    new Command('copy')
      .description('copy every copy rule at one pinned etcd revision (writes Consul; --dry-run shows the exact operations and writes nothing)')
      .option('--dry-run', 'plan against Consul and print what would be written; write nothing')
      .option('--show-ops', 'with --dry-run: list every operation (keys and sizes, never values)')
      .option('--resume', 'continue an interrupted copy from its recorded low-water marks')
      .addOption(new Option('--on-conflict <policy>', 'a target key changed in Consul after planning').choices(['overwrite', 'skip', 'fail']).default('overwrite'))
      .option('--delete-extraneous', 'delete target keys under a rule that have no etcd key (behind the delete guard; needs --yes off a terminal)')
      .option('--allow-mass-delete', 'let --delete-extraneous remove more than 10% of a rule\'s target keys')
      .option('--accept-mapping-change', 'go on although the mapping changed since the migration was recorded')
      .option('--accept-cluster-change', 'go on although etcd is another cluster than the migration recorded (rebuilt, its data loaded again): record it, and copy at its revision')
      .option('-y, --yes', 'confirm destructive flags without a prompt')
      .option('--rate <ops/s>', 'cap writes per second (production clusters)')
      .option('--concurrency <n>', 'txns in flight', '8')
      .option('--page-keys <n>', PAGE_KEYS_HELP, String(DEFAULT_PAGE_KEYS))
      .addHelpText('after', '\nExamples:\n  migrate copy --dry-run --show-ops\n  migrate copy --rate 2000\n  migrate copy --resume\n'),
    ['text', 'json'],
    async (ctx, options: CopyFlags & GlobalOptions) => {
      // Checked before the configuration is read or a server contacted.
      if (options.showOps && !options.dryRun) {
        // A preview flag on a real copy: refused rather than copying while the user meant to look.
        throw new UsageError('flag_invalid', '--show-ops lists the operations of a dry-run; without --dry-run this would copy.', { hint: 'Add --dry-run to see the operations, or leave --show-ops out to copy.' });
      }
      const rate = wholeNumber('--rate', options.rate, 0);
      const concurrency = wholeNumber('--concurrency', options.concurrency, 8, 1, 256);
      const pageKeys = wholeNumber('--page-keys', options.pageKeys, DEFAULT_PAGE_KEYS, 1, MAX_PAGE_KEYS);
      if (options.deleteExtraneous && !options.dryRun && !options.yes) {
        const ask = confirmationPrompt(ctx, 'copy --delete-extraneous deletes keys in Consul', 'Pass --yes to confirm (review `migrate copy --dry-run --delete-extraneous` first).');
        const question = 'copy --delete-extraneous deletes the Consul keys under the rules\' prefixes that no etcd key maps to (`migrate copy --dry-run --delete-extraneous` lists them; the delete guard still holds).\nType "delete" to copy and delete them: ';
        if (!(await ask(question, 'delete'))) throw new RefusedError('not_confirmed', 'copy --delete-extraneous was not confirmed; nothing was written or deleted.', { hint: 'Run it again and type "delete", or pass --yes.' });
      }
      const { resolveConnections } = await import('../../config/connections.js');
      const { openStores, openDatacenters, datacenterFlag } = await import('../stores.js');
      const { namesDatacenters } = await import('../../mapping/datacenters.js');
      const { runCopy, refuseWhileDualRunLeads, refuseUnmapped, acquireCopyLock } = await import('../../copy/copy.js');
      const { refuseOverlappingMigrations } = await import('../../state/migrations.js');
      const { renderCopy, renderCopyDatacenters } = await import('../../copy/render.js');
      const { createProgressView } = await import('../../report/progress.js');
      const { preflightConsul } = await import('../../doctor/preflight.js');
      const loaded = await ctx.loadConfig(options.config, true);
      if (loaded.mapping.copyRules.length + loaded.mapping.serviceRules.length === 0) {
        // Before any server is contacted: a copy of nothing would still write the migration's state.
        throw new RefusedError('copy_no_rules', 'migration.yaml has no copy or service rule: there is nothing to copy, and nothing was written.', { hint: 'Add a rule with action: copy (the default) or action: service (see `migrate init`).' });
      }
      const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd, loaded.file);
      const { source, target, close } = openStores(connections, loaded.config);
      const view = createProgressView(ctx);
      try {
        await refuseUnmapped(source, loaded.mapping);
        const lanes = await openDatacenters(loaded, target, datacenterFlag(connections));
        // With rules naming datacenters, reports have one part per datacenter, even for the one --datacenter picks.
        const several = namesDatacenters(loaded.config);
        const copies: { datacenter: string; result?: CopyResult; error?: Error }[] = [];
        for (const lane of lanes) {
          if (ctx.signal.aborted) break;
          let started = false;
          const progress = { title: `${options.dryRun ? 'planning' : 'copying'}${several ? ` ${lane.datacenter}` : ''}`, items: [] as ProgressItem[], retries: 0, startedAt: Date.now() };
          try {
            await preflightConsul(lane.target, lane.config, lane.mapping, options.dryRun ? 'copy --dry-run' : 'copy', {
              writeTargets: !options.dryRun,
              writeState: !options.dryRun,
              sessions: !options.dryRun && lane.mapping.copyRules.some((r) => r.leases === 'session'),
            });
            // The dry-run too: it shows what copy would do, and copy would do nothing but this refusal.
            await refuseWhileDualRunLeads(lane.target, lane.config);
            // Another migration's keys under a rule's to would be taken for this one's (extraneous, overwritten, mirrored).
            await refuseOverlappingMigrations(lane.target, lane.config, (text) => view.warn(several ? `${lane.datacenter}: ${text}` : text));
            const result = await runCopy(
              { source, target: lane.target, config: lane.config, mapping: lane.mapping },
              {
                dryRun: Boolean(options.dryRun),
                recordOps: Boolean(options.dryRun && (options.showOps || ctx.format === 'json')),
                resume: Boolean(options.resume),
                onConflict: options.onConflict,
                deleteExtraneous: Boolean(options.deleteExtraneous),
                allowMassDelete: Boolean(options.allowMassDelete),
                acceptMappingChange: Boolean(options.acceptMappingChange),
                acceptClusterChange: Boolean(options.acceptClusterChange),
                rate,
                concurrency,
                pageKeys,
                signal: ctx.signal,
                lock: () => acquireCopyLock(lane.target, lane.config, ctx.signal),
                now: () => new Date(),
                toolVersion: TOOL_VERSION,
                onProgress: (event) => {
                  if (event.type === 'start') started = true;
                  if (event.type === 'start') progress.items = event.rules.map((r) => ({ name: r.name, total: r.keys, done: 0, bytes: 0 }));
                  else if (event.type === 'progress') {
                    const item = progress.items.find((i) => i.name === event.rule);
                    if (item) Object.assign(item, { done: event.keysDone, bytes: event.bytes });
                    progress.retries = event.retries;
                  } else if (event.type === 'warning') view.warn(several ? `${lane.datacenter}: ${event.message}` : event.message);
                  if (event.type !== 'warning') view.update(progress);
                },
              },
            );
            copies.push({ datacenter: lane.datacenter, result });
          } catch (caught) {
            const err = !options.dryRun && started ? resumable(caught) : caught;
            // One datacenter that does not answer does not keep the others from being copied (issue 11).
            if (!several || !isMigrateError(err) || err.exitCode !== ExitCode.server) throw err;
            view.warn(`${lane.datacenter}: ${err.message}`);
            copies.push({ datacenter: lane.datacenter, error: err });
          }
        }
        await view.close();
        if (!several) {
          const result = copies[0]!.result!;
          ctx.result(renderCopy(result, ctx.format, Boolean(options.showOps)));
          return result.interrupted ? ExitCode.interrupted : ExitCode.ok;
        }
        ctx.result(renderCopyDatacenters(copies, ctx.format, Boolean(options.showOps)));
        if (copies.some((c) => c.error)) return ExitCode.server;
        return copies.some((c) => c.result?.interrupted) || copies.length < lanes.length ? ExitCode.interrupted : ExitCode.ok;
      } finally {
        await view.close();
        close();
      }
    },
  );
}

/**
 * A copy a server stopped after it began writing: its progress is recorded, and `--resume` continues
 * from it. Said after the server's own next step (start etcd, fix the token, ...).
 */
export function resumable(err: unknown): unknown {
  // copy_lock_lost's own hint says how to resume: not told twice.
  if (!isMigrateError(err) || err.exitCode !== ExitCode.server || err.code === 'copy_lock_lost') return err;
  return new ServerError(err.code, err.message, { hint: `${err.hint ? `${err.hint.replace(/\.?$/, '.')} ` : ''}Then run \`migrate copy --resume\`: it continues where this copy stopped.`, details: err.details, cause: err });
}
