import { Command } from 'commander';
import { ExitCode } from '../../errors.js';
import type { GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';
import type { ProgressItem } from '../../report/progress.js';
import { collect, MAX_PAGE_KEYS, wholeNumber } from './audit-flags.js';
import { DEFAULT_PAGE_KEYS, PAGE_KEYS_HELP } from '../../stores/types.js';

interface PlanFlags {
  prefix: string[];
  pageKeys?: string;
  list?: string;
}

export function registerPlan({ add }: CommandRegistrar): void {
  add(
    new Command('plan')
      .description('resolve migration.yaml against the live keyspace: per rule the keys and bytes to copy, sessions to create, keys kept on etcd, unmapped and unmappable keys (reads only)')
      .option('--prefix <prefix>', 'plan only this etcd prefix (repeatable; default the whole keyspace)', collect, [])
      .option('--page-keys <n>', PAGE_KEYS_HELP, String(DEFAULT_PAGE_KEYS))
      .option('--list <n>', 'unmappable keys listed at most (the total is always exact)', '1000')
      .addHelpText('after', '\nExamples:\n  migrate plan -c migration.yaml\n  migrate plan --format markdown > plan.md\n'),
    ['text', 'json', 'markdown'],
    async (ctx, options: PlanFlags & GlobalOptions) => {
      const pageKeys = wholeNumber('--page-keys', options.pageKeys, DEFAULT_PAGE_KEYS, 1, MAX_PAGE_KEYS);
      const listCap = wholeNumber('--list', options.list, 1000, 0);
      const { resolveConnections } = await import('../../config/connections.js');
      const { EtcdSource } = await import('../../stores/etcd.js');
      const { runPlan } = await import('../../plan/plan.js');
      const { renderPlan } = await import('../../plan/render.js');
      const { createProgressView } = await import('../../report/progress.js');
      const loaded = await ctx.loadConfig(options.config, true);
      const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd, loaded.file);
      const source = new EtcdSource(connections.source);
      const { ConsulTarget } = await import('../../stores/consul.js');
      // Asked only for its limits (what the copy holds back as too large): a short timeout and no retries, so a missing Consul costs a second.
      const target = new ConsulTarget({ ...connections.target, timeoutMs: 3_000 }, { limits: loaded.config.target.limits, retry: { attempts: 1 } });
      const { checkNamedDatacenters } = await import('../stores.js');
      const view = createProgressView(ctx);
      const progress = { title: 'planning', items: [{ name: 'keys', total: 0, done: 0 }] as ProgressItem[], retries: 0, startedAt: Date.now() };
      try {
        await checkNamedDatacenters(loaded, connections.target, (message) => view.warn(message));
        const result = await runPlan({
          source,
          target,
          config: loaded.config,
          configFile: loaded.file!,
          mapping: loaded.mapping,
          // The plan reads etcd (Consul only answers which datacenters exist, and its limits); with datacenters: in the rules the primary is target.datacenter of the file (the copy's too), else unnamed.
          primaryDatacenter: loaded.config.target.datacenter,
          prefixes: options.prefix,
          pageKeys,
          listCap,
          signal: ctx.signal,
          onProgress: (keys, total) => {
            progress.items[0] = { name: 'keys', total: total ?? keys, done: keys };
            view.update(progress);
          },
          onWarning: (message) => view.warn(message),
        });
        await view.close();
        ctx.result(renderPlan(result, ctx.format));
        if (result.scope.interrupted) return ExitCode.interrupted;
        return result.blockers.length > 0 ? ExitCode.findings : ExitCode.ok;
      } finally {
        await view.close();
        source.close();
        target.close();
      }
    },
  );
}
