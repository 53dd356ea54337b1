import { once } from 'node:events';
import { createWriteStream, existsSync, linkSync, mkdirSync, realpathSync, renameSync, rmSync, statSync, type WriteStream } from 'node:fs';
import { basename, dirname } from 'node:path';
import { UsageError } from '../errors.js';
import type { ExportSink } from './export.js';

/**
 * A file of keys (an export, a rollback point, a snapshot) written whole or
 * not at all. The content goes to `<file>.partial-<pid>` beside it and becomes
 * `file` only on `commit()`, so a write that fails or is interrupted leaves no
 * cut-off file that looks like a whole one, and no earlier file half
 * overwritten. Without `replace`, an existing `file` is never replaced: it may
 * be the rollback point of an earlier cutover. Created mode 0600: values are in it.
 *
 * With `replace`, a symbolic link keeps pointing where it did (its target is
 * replaced), and a file that is not a regular one (a device such as /dev/null or
 * /dev/stdout, a named pipe) is written into directly, never replaced.
 */
export class WholeFile {
  /** Where the content goes: `file`, or the file a symbolic link `file` points to. */
  private readonly path: string;
  private readonly partial: string;
  /** A device or pipe: written into as it is, with no partial file. */
  private readonly direct: boolean = false;
  private opened = false;
  private stream: WriteStream | undefined;
  private failure: Error | undefined;

  /**
   * `flag`: the option that named the file, for the errors. `makeDir`: create its directory (a default
   * folder); a directory named on the command line must exist, found out before anything is read.
   */
  constructor(readonly file: string, private readonly options: { replace: boolean; flag: string; makeDir?: boolean }) {
    this.path = file;
    if (basename(file) === '-') {
      throw new UsageError('flag_invalid', `${options.flag} - would write a file named "-": this command writes files, not standard output.`, {
        hint: `Name a file${options.replace ? ` (or /dev/stdout to write to standard output)` : ''}.`,
      });
    }
    if (!options.makeDir && !isDirectory(dirname(file))) throw this.unwritable(new Error(`${dirname(file)} is not a directory`));
    if (existsSync(file)) {
      if (!options.replace) throw fileExists(file, options.flag);
      // Found out before anything is read, not at the rename after it.
      const stat = statSync(file);
      if (stat.isDirectory()) throw this.unwritable(new Error('it is a directory; name a file'));
      this.direct = !stat.isFile();
      // A device or pipe is opened by the name given: /dev/stdout on a pipe resolves to `pipe:[…]`, which cannot be opened.
      this.path = this.direct ? file : realpathSync(file);
    }
    this.partial = `${this.path}.partial-${process.pid}`;
  }

  /** Starts the content, again if it was started: what an earlier `open` wrote is dropped. */
  open(): ExportSink {
    // What went into a device or pipe cannot be taken back.
    if (this.direct && this.opened) throw this.unwritable(new Error('what was written into it cannot be taken back to start again'));
    this.opened = true;
    // What an earlier open wrote goes; `drop` leaves alone the file this open then writes.
    void this.drop();
    if (this.options.makeDir) {
      try {
        mkdirSync(dirname(this.path), { recursive: true });
      } catch (err) {
        throw this.unwritable(err);
      }
    }
    const stream = createWriteStream(this.direct ? this.path : this.partial, { mode: 0o600 });
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
    if (this.direct) return;
    try {
      if (this.options.replace) renameSync(this.partial, this.path);
      else this.linkNew();
    } catch (err) {
      throw err instanceof UsageError ? err : this.unwritable(err);
    }
  }

  /** The partial file under the final name, failing rather than replacing a file there. */
  private linkNew(): void {
    try {
      // link, not rename: it fails when the name is taken instead of replacing what is there.
      linkSync(this.partial, this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw fileExists(this.file, this.options.flag);
      // A file system without hard links: rename, having checked the name is free.
      if (existsSync(this.path)) throw fileExists(this.file, this.options.flag);
      renameSync(this.partial, this.path);
      return;
    }
    rmSync(this.partial, { force: true });
  }

  /**
   * Drops what was written; `file` itself, committed or earlier, is left as it is.
   * Settles once nothing is left: a stream destroyed before its file was open
   * (an interrupt right after `open`) still creates it, then closes.
   */
  async drop(): Promise<void> {
    const stream = this.stream;
    stream?.destroy();
    this.stream = undefined;
    if (this.direct) return;
    const remove = () => {
      // Not once a new `open` writes there.
      if (this.stream) return;
      try {
        rmSync(this.partial, { force: true });
      } catch {
        // Nothing could be written there (its directory is not one): nothing to drop.
      }
    };
    remove();
    if (stream && !stream.closed) {
      await once(stream, 'close').catch(() => undefined);
      remove();
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

/** Whether `path` is a directory (false when it is missing or unreadable). */
export function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function fileExists(file: string, flag: string): UsageError {
  return new UsageError('file_exists', `${file} (${flag}) already exists; it is never overwritten.`, {
    hint: 'It may be the rollback point or export of an earlier attempt: keep it, move it away, or pass another path.',
  });
}
