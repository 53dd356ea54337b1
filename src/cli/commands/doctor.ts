import { Command } from 'commander';
import type { CommandRegistrar } from '../main.js';

export function registerDoctor({ add }: CommandRegistrar): void {
  add(
    new Command('doctor')
      .description('check that etcd and Consul answer, their versions, the txn limit, ACLs, and that the credentials can read the source and write the state prefix')
      .addHelpText('after', '\nExample:\n  CONSUL_HTTP_TOKEN_FILE=~/.consul-token migrate doctor --config migration.yaml\n'),
    ['text', 'json'],
    async (ctx, options) => {
      const { resolveConnections } = await import('../../config/connections.js');
      const { runDoctor } = await import('../../doctor/doctor.js');
      const { renderDoctor } = await import('../../doctor/render.js');
      const loaded = await ctx.loadConfig(options.config, false);
      const connections = resolveConnections(loaded.config, options, ctx.io.env, ctx.io.cwd, loaded.file);
      const result = await runDoctor({ config: loaded.config, configFile: loaded.file, connections, mapping: loaded.mapping });
      ctx.result(renderDoctor(result, ctx.format));
      return result.exitCode;
    },
  );
}
