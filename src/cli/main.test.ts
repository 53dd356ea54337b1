import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { asInterrupt, main } from './main.js';
import { ExitCode, InterruptedError, UsageError } from '../errors.js';
import { captureIo } from '../../test/support/capture-io.js';

const io = captureIo;

describe('CLI contract (in-process)', () => {
  it('--version prints the package version', async () => {
    const t = io();
    expect(await main(['--version'], t)).toBe(0);
    expect(t.out.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('a failure after an interrupt (a request\'s AbortError) is the interrupt, exit 130 with what to do, not an internal error; the tool\'s own errors stay', () => {
    const aborted = AbortSignal.abort();
    const abortError = Object.assign(new Error('The operation was aborted'), { name: 'AbortError' });
    const mapped = asInterrupt(abortError, aborted, 'verify');
    expect(mapped).toBeInstanceOf(InterruptedError);
    expect(mapped).toMatchObject({ code: 'interrupted', exitCode: ExitCode.interrupted, message: 'migrate verify was interrupted.' });
    expect((mapped as InterruptedError).hint).toContain('Run `migrate verify` again');
    // A copy goes on where it stopped.
    expect((asInterrupt(abortError, aborted, 'copy') as InterruptedError).hint).toContain('Run `migrate copy --resume` to go on where it stopped');
    const own = new UsageError('flag_invalid', 'bad flag');
    expect(asInterrupt(own, aborted, 'verify')).toBe(own);
    expect(asInterrupt(abortError, new AbortController().signal, 'verify')).toBe(abortError);
  });

  it('cutover, rollback and finalize with no --rule say so first, before asking for --yes off a terminal', async () => {
    for (const command of ['cutover', 'rollback', 'finalize']) {
      const io = captureIo();
      expect(await main([command], io)).toBe(2);
      expect(io.err).toContain('error[rule_missing]: Name at least one rule with --rule <name>.');
    }
  });

  it('cutover, rollback and finalize of a rule migration.yaml does not have say so before asking for --yes off a terminal (the servers are not asked)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'migrate-rule-'));
    writeFileSync(join(dir, 'migration.yaml'), 'version: 1\nid: r\nrules:\n  - { name: app, from: /app/, to: app/ }\n');
    // Addresses nothing listens on: a command that reached a server would fail with exit 3.
    const env = { MIGRATE_CONFIG: join(dir, 'migration.yaml'), ETCDCTL_ENDPOINTS: 'http://127.0.0.1:1', CONSUL_HTTP_ADDR: 'http://127.0.0.1:1' };
    for (const args of [['cutover', '--rule', 'nope'], ['rollback', '--rule', 'app', '--rule', 'nope'], ['finalize', '--rule', 'nope', '--delete-etcd']]) {
      const t = io(env);
      expect(await main(args, t)).toBe(2);
      expect(t.err).toContain('error[rule_unknown]: --rule nope names no rule of migration.yaml.');
      expect(t.err).toContain('Use one of: app.');
    }
    // A rule it has: then --yes is asked for, still before any server.
    for (const args of [['cutover', '--rule', 'app'], ['finalize', '--rule', 'app', '--delete-etcd']]) {
      const t = io(env);
      expect(await main(args, t)).toBe(2);
      expect(t.err).toContain('error[confirmation_required]');
    }
  });

  it('--help groups commands and lists the exit codes', async () => {
    const t = io();
    expect(await main(['--help'], t)).toBe(0);
    expect(t.out).toContain('Read-only:');
    expect(t.out).toContain('4 refused by a guard or precondition');
  });

  it('no command is a usage error (exit 2)', async () => {
    expect(await main([], io())).toBe(2);
  });

  it('an unknown command or flag is a usage error (exit 2) reported like every error: code, next step, docs', async () => {
    const t = io();
    expect(await main(['zzzz'], t)).toBe(2);
    expect(t.err).toBe("error[usage_invalid]: unknown command 'zzzz'\n  next: `migrate --help` lists the commands.\n  see: README.md#error-usage_invalid\n");
    const flag = io();
    expect(await main(['doctor', '--forma', 'json'], flag)).toBe(2);
    expect(flag.err).toBe("error[usage_invalid]: unknown option '--forma'\n  next: Did you mean --format? `migrate doctor --help` lists its flags.\n  see: README.md#error-usage_invalid\n");
    expect(flag.out).toBe('');
    // With --format json, the error is also the JSON document on stdout.
    const json = io();
    expect(await main(['audit', '--bogus', '--format', 'json'], json)).toBe(2);
    expect(JSON.parse(json.out)).toMatchObject({ command: 'audit', status: 'error', error: { code: 'usage_invalid', message: "unknown option '--bogus'" } });
  });

  it('says the mapping\'s warnings where they point, as lines or as NDJSON events with --progress json', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'migrate-warn-'));
    writeFileSync(join(dir, 'migration.yaml'), 'version: 1\nid: w\nrules:\n  - { name: jobs, from: /jobs/, to: jobs }\n  - { name: svc, from: /svc/, to: svc/, action: service }\n  - { name: k, from: /k/, to: k/, action: keep }\n');
    const text = io({ MIGRATE_CONFIG: join(dir, 'migration.yaml') });
    expect(await main(['acl'], text)).toBe(0);
    const file = join(dir, 'migration.yaml');
    expect(text.err.split('\n').filter((l) => l.startsWith('warning: '))).toEqual([
      `warning: ${file}:4:37: rules[0].to: to "jobs" does not end in "/" but from "/jobs/" does: "/jobs/x" becomes "jobsx"`,
      `warning: ${file}:5:35: rules[1].to: to "svc/" is ignored: a service rule registers catalog instances, not KV keys`,
      `warning: ${file}:6:31: rules[2].to: to "k/" is ignored: a keep rule leaves its keys on etcd`,
    ]);
    const json = io({ MIGRATE_CONFIG: file });
    expect(await main(['acl', '--progress', 'json'], json)).toBe(0);
    const events = json.err.trim().split('\n').map((l) => JSON.parse(l) as { event: string; message: string });
    expect(events.slice(0, -1).map((e) => [e.event, e.message.split(': ')[1]])).toEqual([['warning', 'rules[0].to'], ['warning', 'rules[1].to'], ['warning', 'rules[2].to']]);
    // The last event says the command ended, and how.
    expect(events.at(-1)).toMatchObject({ event: 'end', exitCode: 0 });
  });

  it('control characters quoted in an error or warning (a to: from migration.yaml) reach the terminal escaped, not as escape sequences', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'migrate-ctl-'));
    writeFileSync(join(dir, 'migration.yaml'), 'version: 1\nid: c\nrules:\n  - { name: app, from: /app/, to: "q\\e[31mRED/" }\n');
    const t = io({ MIGRATE_CONFIG: join(dir, 'migration.yaml') });
    expect(await main(['plan'], t)).toBe(2);
    expect(t.err).toContain('config_invalid');
    expect(t.err).not.toContain('\x1b');
    expect(t.err).toContain('\\x1b[31mRED');
  });

  it('a --summary-file in a missing directory is refused before the verify (it crashed after a verify that passed)', async () => {
    const t = io({ MIGRATE_CONFIG: '/nonexistent/migration.yaml', CONSUL_HTTP_ADDR: 'http://127.0.0.1:1', ETCDCTL_ENDPOINTS: 'http://127.0.0.1:1' });
    expect(await main(['verify', '--summary-file', '/nonexistent-dir-migrate/s.md', '--progress', 'none'], t)).toBe(2);
    expect(t.err).toContain('error[file_unwritable]: Cannot write /nonexistent-dir-migrate/s.md (--summary-file): /nonexistent-dir-migrate is not a directory.');
    expect(t.err).not.toContain('config_not_found');
  });

  it('a --summary-file that is a directory is refused before the verify, as one error document', async () => {
    const t = io({ MIGRATE_CONFIG: '/nonexistent/migration.yaml', CONSUL_HTTP_ADDR: 'http://127.0.0.1:1', ETCDCTL_ENDPOINTS: 'http://127.0.0.1:1' });
    expect(await main(['verify', '--summary-file', tmpdir(), '--progress', 'none', '--format', 'json'], t)).toBe(2);
    expect(JSON.parse(t.out)).toMatchObject({ status: 'error', error: { code: 'file_unwritable', message: `Cannot write ${tmpdir()} (--summary-file): it is a directory.` } });
    expect(t.err).not.toContain('config_not_found');
  });

  it('with --progress json an error is an NDJSON event on stderr too, so stderr holds nothing else', async () => {
    const t = io({ MIGRATE_CONFIG: join(tmpdir(), 'no-such-dir-migrate', 'migration.yaml') });
    expect(await main(['copy', '--progress', 'json'], t)).toBe(2);
    const lines = t.err.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(JSON.parse(lines[0]!)).toMatchObject({ event: 'error', code: 'config_not_found', docs: 'README.md#error-config_not_found' });
    expect(JSON.parse(lines[1]!)).toMatchObject({ event: 'end', exitCode: 2 });
    const parse = io();
    expect(await main(['copy', '--progress=json', '--bogus'], parse)).toBe(2);
    expect(JSON.parse(parse.err.trim().split('\n')[0]!)).toMatchObject({ event: 'error', code: 'usage_invalid', message: "unknown option '--bogus'" });
  });

  it('an unsupported --format is the documented format_unsupported (exit 2), naming the allowed ones', async () => {
    const t = io();
    expect(await main(['copy', '--format', 'junit'], t)).toBe(2);
    expect(t.err).toBe('error[format_unsupported]: migrate copy has no --format junit; it writes text, json.\n  next: Use --format text or --format json.\n  see: README.md#error-format_unsupported\n');
    expect(t.out).toBe('');
  });

  it('a flag before the command (`migrate -c f status`) says flags go after the command, and gives the command line that does', async () => {
    const t = io();
    expect(await main(['-c', 'conf/m.yaml', 'status'], t)).toBe(2);
    expect(t.err).toBe("error[usage_invalid]: unknown option '-c' before the command: flags go after the command's name.\n  next: Run `migrate status -c conf/m.yaml`.\n  see: README.md#error-usage_invalid\n");
  });

  it('an unknown --progress mode is the documented progress_unsupported (exit 2)', async () => {
    const t = io();
    expect(await main(['status', '--progress', 'foo'], t)).toBe(2);
    expect(t.err).toBe('error[progress_unsupported]: --progress foo is not a progress mode.\n  next: Use --progress auto, plain, json or none.\n  see: README.md#error-progress_unsupported\n');
  });

  it('a numeric flag out of range exits 2 naming the flag, before the configuration is read or a server contacted', async () => {
    // The configuration does not exist: an error about it would mean the flags were checked too late.
    const cases: [string[], string][] = [
      [['copy', '--page-keys', '0'], '--page-keys must be a whole number ≥ 1, not "0"'],
      [['copy', '--concurrency', '0'], '--concurrency must be a whole number ≥ 1, not "0"'],
      [['copy', '--rate', '-5'], '--rate must be a whole number ≥ 0, not "-5"'],
      [['copy', '--dry-run', '--rate', '1.5'], '--rate must be a whole number ≥ 0, not "1.5"'],
      [['verify', '--page-keys', '0'], '--page-keys must be a whole number ≥ 1, not "0"'],
      [['verify', '--rounds', '0'], '--rounds must be a whole number ≥ 1, not "0"'],
      // Digits only, within bounds: Number() would take these.
      [['verify', '--max-diffs='], '--max-diffs must be a whole number ≥ 0, not ""'],
      [['verify', '--rounds', '0x3'], '--rounds must be a whole number ≥ 1, not "0x3"'],
      [['verify', '--rounds', '1e1'], '--rounds must be a whole number ≥ 1, not "1e1"'],
      [['verify', '--rounds', '1000000'], '--rounds must be at most 100, not 1000000'],
      [['copy', '--page-keys', '99999999999999999999'], '--page-keys must be a whole number ≥ 1, not "99999999999999999999"'],
      [['audit', '--page-keys', '200000'], '--page-keys must be at most 100000, not 200000'],
      // The summary file is checked before anything is read: not after a verify that passed.
      [['verify', '--summary-file', '-'], '--summary-file - would write a file named "-"'],
      // A preview flag without the preview: refused, not a real copy.
      [['copy', '--show-ops'], '--show-ops lists the operations of a dry-run; without --dry-run this would copy'],
    ];
    for (const [argv, message] of cases) {
      const t = io({ MIGRATE_CONFIG: '/nonexistent/migration.yaml', CONSUL_HTTP_ADDR: 'http://127.0.0.1:1', ETCDCTL_ENDPOINTS: 'http://127.0.0.1:1' });
      expect(await main([...argv, '--progress', 'none'], t), argv.join(' ')).toBe(2);
      expect(t.err).toContain('error[flag_invalid]');
      expect(t.err).toContain(message);
      expect(t.err).not.toContain('config_not_found');
    }
  });

  it('copy with no copy or service rule refuses (exit 4) before contacting a server', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'migrate-norules-'));
    for (const rules of ['rules: []', 'rules:\n  - { name: k8s, from: /registry/, action: keep }']) {
      writeFileSync(join(dir, 'migration.yaml'), `version: 1\nid: empty\n${rules}\n`);
      // Closed ports: a server contacted would be exit 3, not the refusal.
      const t = io({ MIGRATE_CONFIG: join(dir, 'migration.yaml'), CONSUL_HTTP_ADDR: 'http://127.0.0.1:1', ETCDCTL_ENDPOINTS: 'http://127.0.0.1:1' });
      expect(await main(['copy', '--progress', 'none'], t), rules).toBe(4);
      expect(t.err).toContain('error[copy_no_rules]');
    }
  });

  it('a broken configuration exits 2 with the position, and JSON mode prints one error document', async () => {
    const t = io({ MIGRATE_CONFIG: '/nonexistent/migration.yaml' });
    expect(await main(['doctor', '--format', 'json'], t)).toBe(2);
    const doc = JSON.parse(t.out);
    expect(doc).toMatchObject({ version: 1, command: 'doctor', status: 'error', error: { code: 'config_not_found' } });
    expect(t.err).toContain('error[config_not_found]');
    expect(t.err).toContain('next:');
  });

  it('with the dual-run\'s --log-format json, an error that ends the command is one JSON log line, like the rest of stderr', async () => {
    const t = io({ MIGRATE_CONFIG: '/nonexistent/migration.yaml' });
    expect(await main(['dualrun', '--log-format', 'json'], t)).toBe(2);
    const lines = t.err.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'error', code: 'config_not_found', msg: expect.stringContaining('/nonexistent/migration.yaml'), hint: expect.any(String), docs: expect.stringContaining('#error-config_not_found') });
  });
});
