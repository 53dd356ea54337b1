import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { createReadStream, existsSync, lstatSync, mkdirSync, mkdtempSync, rmdirSync, symlinkSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { WholeFile } from './whole-file.js';

const dir = () => mkdtempSync(join(tmpdir(), 'whole-file-'));

describe('WholeFile', () => {
  it('becomes the file only on commit, mode 0600, nothing else left beside it', async () => {
    const d = dir();
    const out = new WholeFile(join(d, 'sub', 'out.json'), { replace: false, flag: '--out', makeDir: true });
    const sink = out.open();
    await sink.write('[1,');
    await sink.write(Buffer.from('2]'));
    expect(existsSync(join(d, 'sub', 'out.json'))).toBe(false);
    await out.commit();
    out.drop();
    expect(readFileSync(join(d, 'sub', 'out.json'), 'utf8')).toBe('[1,2]');
    expect(statSync(join(d, 'sub', 'out.json')).mode & 0o777).toBe(0o600);
    expect(readdirSync(join(d, 'sub'))).toEqual(['out.json']);
  });

  it('discarded before its file was even open (an early Ctrl-C), leaves nothing beside it', async () => {
    const d = dir();
    const out = new WholeFile(join(d, 'out.json'), { replace: false, flag: '--out' });
    await out.open().discard();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(readdirSync(d)).toEqual([]);
  });

  it('opened again, drops what the earlier open wrote; dropped, leaves nothing', async () => {
    const d = dir();
    const out = new WholeFile(join(d, 'out.json'), { replace: false, flag: '--out' });
    await out.open().write('first read, cut off');
    await out.open().write('second');
    await out.commit();
    expect(readFileSync(join(d, 'out.json'), 'utf8')).toBe('second');

    const failed = new WholeFile(join(d, 'failed.json'), { replace: false, flag: '--out' });
    await failed.open().write('cut off');
    failed.drop();
    expect(readdirSync(d)).toEqual(['out.json']);
  });

  it('never replaces an existing file: refuses at once, or at commit when it appeared meanwhile, leaving it as it was', async () => {
    const d = dir();
    const file = join(d, 'rollback.json');
    writeFileSync(file, 'earlier rollback point');
    expect(() => new WholeFile(file, { replace: false, flag: '--rollback-file' })).toThrow(expect.objectContaining({ code: 'file_exists', exitCode: 2, message: expect.stringContaining('--rollback-file') }));

    const late = join(d, 'late.json');
    const out = new WholeFile(late, { replace: false, flag: '--export-etcd' });
    await out.open().write('ours');
    writeFileSync(late, 'theirs');
    await expect(out.commit()).rejects.toMatchObject({ code: 'file_exists', exitCode: 2 });
    out.drop();
    expect(readFileSync(late, 'utf8')).toBe('theirs');
    expect(readFileSync(file, 'utf8')).toBe('earlier rollback point');
    expect(readdirSync(d).sort()).toEqual(['late.json', 'rollback.json']);
  });

  it('with replace, the earlier file stays whole until the new one is', async () => {
    const d = dir();
    const file = join(d, 'kv.json');
    writeFileSync(file, 'earlier export');
    const out = new WholeFile(file, { replace: true, flag: '--out' });
    await out.open().write('new export');
    expect(readFileSync(file, 'utf8')).toBe('earlier export');
    await out.commit();
    expect(readFileSync(file, 'utf8')).toBe('new export');
  });

  it('with replace, a named pipe (as a device) is written into and never replaced, and a symbolic link keeps pointing where it did', async () => {
    // A pipe of its own rather than /dev/null: a regression must not replace the machine's devices.
    const d = dir();
    const fifo = join(d, 'pipe');
    execFileSync('mkfifo', [fifo]);
    const reader = createReadStream(fifo);
    const received: Buffer[] = [];
    reader.on('data', (c) => received.push(c as Buffer));
    const readerDone = once(reader, 'end');
    const out = new WholeFile(fifo, { replace: true, flag: '--out' });
    await out.open().write('through the pipe');
    await out.commit();
    out.drop();
    await readerDone;
    expect(Buffer.concat(received).toString()).toBe('through the pipe');
    expect(statSync(fifo).isFIFO()).toBe(true);
    expect(readdirSync(d)).toEqual(['pipe']);
    // Started again (etcd compacted mid-read), it cannot take back what went in: it says so.
    const again = new WholeFile(fifo, { replace: true, flag: '--out' });
    const second = createReadStream(fifo);
    second.resume();
    again.open();
    expect(() => again.open()).toThrow(expect.objectContaining({ code: 'file_unwritable' }));
    again.drop();
    second.destroy();
    expect(statSync(fifo).isFIFO()).toBe(true);

    writeFileSync(join(d, 'real.json'), 'earlier');
    symlinkSync(join(d, 'real.json'), join(d, 'link.json'));
    const linked = new WholeFile(join(d, 'link.json'), { replace: true, flag: '--out' });
    await linked.open().write('new');
    await linked.commit();
    expect(lstatSync(join(d, 'link.json')).isSymbolicLink()).toBe(true);
    expect(readFileSync(join(d, 'real.json'), 'utf8')).toBe('new');
    expect(readdirSync(d).sort()).toEqual(['link.json', 'pipe', 'real.json']);
  });

  it('a place it cannot write is file_unwritable (exit 2), not an internal error', async () => {
    const d = dir();
    writeFileSync(join(d, 'plain'), 'a file, not a directory');
    expect(() => new WholeFile(join(d, 'plain', 'out.json'), { replace: false, flag: '--out' })).toThrow(expect.objectContaining({ code: 'file_unwritable', exitCode: 2, message: expect.stringContaining(join(d, 'plain', 'out.json')) }));
    // A directory named on the command line must exist: made only for a default folder (migrate-rollback/).
    expect(() => new WholeFile(join(d, 'missing', 'out.json'), { replace: true, flag: '--out' })).toThrow(expect.objectContaining({ code: 'file_unwritable', message: expect.stringContaining(`${join(d, 'missing')} is not a directory`) }));
    expect(existsSync(join(d, 'missing'))).toBe(false);
    // "-" is no standard output here: refused, not a file called "-" holding values.
    expect(() => new WholeFile(join(d, '-'), { replace: true, flag: '--out' })).toThrow(expect.objectContaining({ code: 'flag_invalid', message: expect.stringContaining('--out - would write a file named "-"'), hint: expect.stringContaining('/dev/stdout') }));

    // A directory named as the file: refused before anything is written.
    mkdirSync(join(d, 'dir'));
    expect(() => new WholeFile(join(d, 'dir'), { replace: true, flag: '--out' })).toThrow(expect.objectContaining({ code: 'file_unwritable', message: expect.stringContaining('it is a directory') }));
    rmdirSync(join(d, 'dir'));

    // A directory where the file should be by the time it is made: the rename fails (also as root, unlike permissions).
    const blocked = join(d, 'blocked');
    const sink = new WholeFile(blocked, { replace: true, flag: '--out' });
    await sink.open().write('x');
    mkdirSync(blocked);
    await expect(sink.commit()).rejects.toMatchObject({ code: 'file_unwritable', exitCode: 2 });
    sink.drop();
    expect(readdirSync(d).sort()).toEqual(['blocked', 'plain']);
  });
});
