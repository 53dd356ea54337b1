import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { describeProgram, renderBashCompletion } from './completion.js';
import { createProgram, main } from './main.js';
import { captureIo } from '../../test/support/capture-io.js';

const io = captureIo;

async function script(shell: string): Promise<string> {
  const t = io();
  expect(await main(['completion', shell], t)).toBe(0);
  expect(t.err).toBe('');
  return t.out;
}

const dir = mkdtempSync(join(tmpdir(), 'migrate-completion-'));
const hasZsh = spawnSync('zsh', ['-c', 'true']).status === 0;

/** Runs the bash completion function on a command line ending at the cursor; returns the candidates. */
function completeBash(file: string, line: string): string[] {
  const words = line.split(' ');
  const program = [
    `source ${JSON.stringify(file)}`,
    `COMP_WORDS=(${words.map((w) => JSON.stringify(w)).join(' ')})`,
    `COMP_CWORD=${words.length - 1}`,
    '_migrate',
    'printf "%s\\n" "${COMPREPLY[@]}"',
  ].join('\n');
  return execFileSync('bash', ['--norc', '--noprofile', '-c', program], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

describe('migrate completion', () => {
  const { program } = createProgram(io());
  const spec = describeProgram(program);
  const registered = program.commands.map((c) => c.name());

  it('the spec is read from the program: every registered command, with its flags', () => {
    expect(spec.commands.map((c) => c.name)).toEqual([...registered, 'help']);
    const dualrun = program.commands.find((c) => c.name() === 'dualrun')!;
    const flags = dualrun.options.map((o) => o.long);
    expect(flags).toContain('--ha');
    expect(spec.commands.find((c) => c.name === 'dualrun')!.options.flatMap((o) => o.names)).toEqual(expect.arrayContaining(flags as string[]));
  });

  for (const shell of ['bash', 'zsh']) {
    it(`the ${shell} script names every registered command and, for dualrun and verify, every flag`, async () => {
      const text = await script(shell);
      for (const name of registered) expect(text).toContain(name);
      for (const name of ['dualrun', 'verify']) {
        for (const option of program.commands.find((c) => c.name() === name)!.options) {
          for (const flag of [option.short, option.long].filter(Boolean)) expect(text).toContain(flag);
        }
      }
    });
  }

  it('bash -n accepts the bash script, and it completes commands, flags, choices and files', async () => {
    const file = join(dir, 'migrate.bash');
    writeFileSync(file, await script('bash'));
    execFileSync('bash', ['-n', file]);
    expect(completeBash(file, 'migrate ')).toEqual(expect.arrayContaining([...registered, 'help', '--help']));
    expect(completeBash(file, 'migrate du')).toEqual(['dualrun']);
    expect(completeBash(file, 'migrate dualrun --')).toEqual(expect.arrayContaining(['--ha', '--metrics-addr', '--log-format', '--config', '--format']));
    expect(completeBash(file, 'migrate dualrun --log-format ')).toEqual(['text', 'json']);
    expect(completeBash(file, 'migrate verify --format ')).toEqual(['text', 'json', 'markdown', 'junit']);
    expect(completeBash(file, 'migrate completion ')).toEqual(['bash', 'zsh']);
    expect(completeBash(file, 'migrate completion --format json ')).toEqual(['bash', 'zsh']);
    expect(completeBash(file, 'migrate completion bash ')).not.toContain('zsh');
    expect(completeBash(file, 'migrate help ver')).toEqual(['verify']);
    writeFileSync(join(dir, 'migration.yaml'), '');
    expect(completeBash(file, `migrate plan --config ${dir}/migration`)).toEqual([`${dir}/migration.yaml`]);
    // --metrics-addr takes a value that cannot be guessed: nothing is offered.
    expect(completeBash(file, 'migrate dualrun --metrics-addr ')).toEqual([]);
  });

  it.skipIf(!hasZsh)('zsh -n accepts the zsh script, and sourcing it after compinit registers it for both binaries', async () => {
    const file = join(dir, '_migrate');
    writeFileSync(file, await script('zsh'));
    execFileSync('zsh', ['-n', file]);
    const out = execFileSync('zsh', ['-f', '-c', `autoload -U compinit && compinit -u -d ${dir}/zcompdump && source ${file} && print -- $_comps[migrate] $_comps[etcd-consul-migrate]`], { encoding: 'utf8' });
    expect(out.trim()).toBe('_migrate _migrate');
  });

  it('--format json wraps the script in the envelope; an unknown shell is a usage error', async () => {
    const t = io();
    expect(await main(['completion', 'zsh', '--format', 'json'], t)).toBe(0);
    expect(JSON.parse(t.out)).toMatchObject({ version: 1, command: 'completion', status: 'ok', shell: 'zsh', script: expect.stringContaining('#compdef migrate') });
    const bad = io();
    expect(await main(['completion', 'fish'], bad)).toBe(2);
    expect(bad.err).toMatch(/Allowed choices are bash, zsh/);
  });

  it('refuses to put a word with shell syntax into the bash script', () => {
    const evil = { ...spec, commands: [{ name: 'x;rm', summary: '', options: [], arguments: [] }] };
    expect(() => renderBashCompletion(evil, '0')).toThrow(/not a plain word/);
  });
});
