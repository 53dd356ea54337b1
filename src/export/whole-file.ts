import { once } from 'node:events';
import { createWriteStream, existsSync, linkSync, mkdirSync, renameSync, rmSync, statSync, type WriteStream } from 'node:fs';
import { dirname } from 'node:path';
import { UsageError } from '../errors.js';
import type { ExportSink } from './export.js';

/**
 * A file of keys (an export, a rollback point, a snapshot) written whole or
 * not at all. The content goes to `<file>.partial-<pid>` beside it and becomes
 * `file` only on `commit()`, so a write that fails or is interrupted leaves no
 * cut-off file that looks like a whole one, and no earlier file half
 * overwritten. Without `replace`, an existing `file` is never replaced: it may
 * be the rollback point of an earlier cutover. Created mode 0600: values are in it.
 */
export class WholeFile {
  private readonly partial: string;
  private stream: WriteStream | undefined;
  private failure: Error | undefined;

  /** `flag`: the option that named the file, for the errors. */
  constructor(readonly file: string, private readonly options: { replace: boolean; flag: string }) {
    this.partial = `${file}.partial-${process.pid}`;
    if (!existsSync(file)) return;
    if (!options.replace) throw fileExists(file, options.flag);
    // Found out before anything is read, not at the rename after it.
    if (statSync(file).isDirectory()) throw this.unwritable(new Error('it is a directory; name a file'));
  }

  /** Starts the content, again if it was started: what an earlier `open` wrote is dropped. */
  open(): ExportSink {
    this.drop();
    try {
      mkdirSync(dirname(this.file), { recursive: true });
    } catch (err) {
      throw this.unwritable(err);
    }
    const stream = createWriteStream(this.partial, { mode: 0o600 });
    // An error (EACCES, ENOSPC) surfaces at the next write or at commit, never as an unhandled
    // event; one of a stream already dropped (writes cut short by destroy) is of no concern.
    stream.on('error', (err) => {
      if (this.stream === stream) this.failure ??= err;
    });
    this.stream = stream;
    this.failure = undefined;
    return {
      write: async (chunk: string | Buffer) => {
        if (this.failure) throw this.unwritable(this.failure);
        if (!stream.write(chunk)) await this.settled(stream, 'drain');
      },
      discard: () => this.drop(),
    };
  }

  /** Makes the content `file`. Without `replace`, refuses (file_exists) if `file` appeared meanwhile. */
  async commit(): Promise<void> {
    const stream = this.stream;
    if (!stream) throw new Error('internal: commit before open');
    stream.end();
    await this.settled(stream, 'finish');
    this.stream = undefined;
    try {
      if (this.options.replace) renameSync(this.partial, this.file);
      else this.linkNew();
    } catch (err) {
      throw err instanceof UsageError ? err : this.unwritable(err);
    }
  }

  /** The partial file under the final name, failing rather than replacing a file there. */
  private linkNew(): void {
    try {
      // link, not rename: it fails when the name is taken instead of replacing what is there.
      linkSync(this.partial, this.file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw fileExists(this.file, this.options.flag);
      // A file system without hard links: rename, having checked the name is free.
      if (existsSync(this.file)) throw fileExists(this.file, this.options.flag);
      renameSync(this.partial, this.file);
      return;
    }
    rmSync(this.partial, { force: true });
  }

  /** Drops what was written; `file` itself, committed or earlier, is left as it is. */
  drop(): void {
    this.stream?.destroy();
    this.stream = undefined;
    try {
      rmSync(this.partial, { force: true });
    } catch {
      // Nothing could be written there (its directory is not one): nothing to drop.
    }
  }

  private async settled(stream: WriteStream, event: 'drain' | 'finish'): Promise<void> {
    if (this.failure) throw this.unwritable(this.failure);
    try {
      await once(stream, event);
    } catch (err) {
      throw this.unwritable(err);
    }
  }

  private unwritable(err: unknown): UsageError {
    return new UsageError('file_unwritable', `Cannot write ${this.file} (${this.options.flag}): ${(err as Error).message}.`, {
      hint: 'Check the directory, its permissions and free space, or pass another path.',
    });
  }
}

function fileExists(file: string, flag: string): UsageError {
  return new UsageError('file_exists', `${file} (${flag}) already exists; it is never overwritten.`, {
    hint: 'It may be the rollback point or export of an earlier attempt: keep it, move it away, or pass another path.',
  });
}
