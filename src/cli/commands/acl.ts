import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { ExitCode } from '../../errors.js';
import type { GlobalOptions } from '../context.js';
import type { CommandRegistrar } from '../main.js';

interface AclFlags {
  appAccess: 'read' | 'write';
  consulNode?: string;
  outDir?: string;
  heartbeatKey?: string;
}

export function registerAcl({ add }: CommandRegistrar): void {
  add(
    new Command('acl')
      .description('print the Consul ACL policies (the migrator\'s, a read-only verifier\'s for CI, and one per rule for its applications) and the etcd role the migration needs, from migration.yaml alone (contacts no server)')
      .addOption(new Option('--app-access <access>', 'what applications may do under their rule\'s target prefix').choices(['read', 'write']).default('write'))
      .option('--consul-node <name>', 'the Consul agent\'s node name: narrows the session, agent and node rules from every node to this one (verify then cannot see instances on other nodes)')
      .option('--heartbeat-key <etcd key>', 'the key `migrate dualrun --heartbeat-key` writes: the etcd role may write it')
      .option('--out-dir <dir>', 'write one file per policy (<name>.hcl, or <name>.json with --format json) and the etcd role script there')
      .addHelpText('after', '\nWith datacenters: in the rules, the migrator and verifier get one policy per datacenter and every policy is limited to its\ndatacenters (-valid-datacenter); target.datacenter in migration.yaml names the primary, whose policies are otherwise valid everywhere.\n\nExamples:\n  migrate acl --out-dir acl/ && consul acl policy create -name migrate-demo-migrator -rules @acl/migrate-demo-migrator.hcl\n  migrate acl --format json --app-access read\n'),
    ['text', 'hcl', 'json'],
    async (ctx, options: AclFlags & GlobalOptions) => {
      const { planAcl } = await import('../../acl/acl.js');
      const { renderAcl, renderAclFiles } = await import('../../acl/render.js');
      const loaded = await ctx.loadConfig(options.config, true);
      const { checkHeartbeatKey } = await import('../../dualrun/lag-heartbeat.js');
      const heartbeatKey = options.heartbeatKey !== undefined ? checkHeartbeatKey(loaded.mapping, options.heartbeatKey) : undefined;
      // The primary datacenter (rules without `datacenters:` go there) is named offline only by target.datacenter, as the copy takes it.
      const primaryDatacenter = loaded.config.target.datacenter;
      const plan = planAcl(loaded.config, loaded.mapping, { appAccess: options.appAccess, consulNode: options.consulNode, ...(heartbeatKey ? { heartbeatKey } : {}), ...(primaryDatacenter ? { primaryDatacenter } : {}) });
      const format = ctx.format as 'text' | 'hcl' | 'json';
      if (!options.outDir) {
        ctx.result(renderAcl(plan, format));
        return ExitCode.ok;
      }
      const dir = resolve(ctx.io.cwd, options.outDir);
      mkdirSync(dir, { recursive: true });
      const files = renderAclFiles(plan, format);
      for (const file of files) writeFileSync(join(dir, file.name), file.content, { mode: file.name.endsWith('.sh') ? 0o755 : 0o644 });
      ctx.result(renderAcl(plan, format, { dir, files: files.map((f) => f.name) }));
      return ExitCode.ok;
    },
  );
}
