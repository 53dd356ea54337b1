import { Argument, Command } from 'commander';
import { ExitCode } from '../../errors.js';
import type { CommandRegistrar } from '../main.js';
import { TOOL_VERSION } from '../version.js';

export function registerCompletion({ program, add }: CommandRegistrar): void {
  add(
    new Command('completion')
      .description('print a bash or zsh completion script for every command and flag (generated from this program, so it never goes stale)')
      .addArgument(new Argument('<shell>', 'the shell').choices(['bash', 'zsh']))
      .addHelpText('after', `
Install:
  bash  migrate completion bash > ~/.local/share/bash-completion/completions/migrate   (or: source <(migrate completion bash))
  zsh   migrate completion zsh > "\${fpath[1]}/_migrate"   (a directory in $fpath; then start a new shell)

Examples:
  source <(migrate completion bash)
  migrate completion zsh > ~/.zsh/completions/_migrate
`),
    ['text', 'json'],
    async (ctx, _options, [shell]) => {
      const { describeProgram, renderBashCompletion, renderZshCompletion } = await import('../completion.js');
      const spec = describeProgram(program);
      const script = shell === 'zsh' ? renderZshCompletion(spec, TOOL_VERSION) : renderBashCompletion(spec, TOOL_VERSION);
      if (ctx.format === 'json') {
        const { renderEnvelope } = await import('../../report/envelope.js');
        ctx.result(renderEnvelope('completion', 'ok', { shell, script }));
      } else {
        ctx.result(script);
      }
      return ExitCode.ok;
    },
  );
}
