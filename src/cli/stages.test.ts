import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { createProgram, main } from './main.js';
import { COMMAND_STAGES, STAGE_HEADINGS } from './stages.js';
import { captureIo } from '../../test/support/capture-io.js';

const io = captureIo;

/** Parses argv with the real program, every action replaced: throws what the CLI would refuse. */
async function parseOnly(argv: string[]): Promise<Command> {
  const { program } = createProgram(io());
  let ran: Command | undefined;
  for (const command of program.commands) command.action(() => void (ran = command));
  await program.parseAsync(argv, { from: 'user' });
  if (!ran) throw new Error(`no command ran for ${argv.join(' ')}`);
  return ran;
}

/** The `migrate …` invocations in an example line (`source <(migrate completion bash)`, `… > file`). */
function invocations(example: string): string[][] {
  return [...example.matchAll(/migrate ([^()>]*)/g)].map((m) => m[1]!.trim().split(/\s+/));
}

describe('migrate --help groups commands by stage', () => {
  const { program } = createProgram(io());
  const registered = program.commands.map((c) => c.name());

  it('every registered command has a stage and an example', () => {
    for (const name of registered) expect(COMMAND_STAGES, name).toHaveProperty(name);
  });

  it('lists each command under its stage heading, then one example per command, stage by stage', async () => {
    const t = io();
    expect(await main(['--help'], t)).toBe(0);
    const help = t.out;
    const read = help.indexOf(`\n${STAGE_HEADINGS['read-only']}\n`);
    const writes = help.indexOf(`\n${STAGE_HEADINGS.writes}\n`);
    const examples = help.indexOf('\nRead-only, for example:\n');
    expect(read).toBeGreaterThan(0);
    expect(writes).toBeGreaterThan(read);
    expect(examples).toBeGreaterThan(writes);
    expect(help).not.toContain('\nCommands:\n');
    const section = (start: number, end: number) => help.slice(start, end);
    for (const name of registered) {
      const { stage, example } = COMMAND_STAGES[name]!;
      const [from, to] = stage === 'read-only' ? [read, writes] : [writes, examples];
      expect(section(from, to), `${name} under ${stage}`).toMatch(new RegExp(`\\n  ${name} `));
      expect(help.slice(examples), `example of ${name}`).toContain(`  ${example}\n`);
    }
    expect(section(read, writes)).toMatch(/\n {2}help \[command\]/);
    expect(help).toContain('4 refused by a guard or precondition');
  });

  it('the examples of the registered commands are accepted by the CLI as written', async () => {
    await expect(parseOnly(['dualrun', '--bogus'])).rejects.toThrow(/unknown option/);
    for (const name of registered) {
      const runs = invocations(COMMAND_STAGES[name]!.example);
      expect(runs.length, name).toBeGreaterThan(0);
      for (const argv of runs) expect((await parseOnly(argv)).name()).toBe(name);
    }
  });

  it('the read-only commands do not include a writing one (DESIGN §4)', () => {
    for (const name of ['copy', 'dualrun', 'cutover', 'rollback', 'finalize', 'probe-latency']) expect(COMMAND_STAGES[name]!.stage).toBe('writes');
    for (const name of ['doctor', 'audit', 'init', 'plan', 'verify', 'status', 'export', 'acl']) expect(COMMAND_STAGES[name]!.stage).toBe('read-only');
  });
});
