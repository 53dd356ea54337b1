/** Samples kept (one a progress tick, a second apart): the oldest always stays, it dates the lag. */
const SAMPLES_KEPT = 600;

/**
 * What etcd's watch has sent, whether or not the applier has taken it yet:
 * each response names etcd's revision. A dual-run stuck on a frozen Consul
 * stops consuming its watch, and etcd's changes wait in the watch's queue;
 * its lag must grow all the same (read from consumed messages only, it read 0).
 *
 * Sampled once a progress tick: `seen(revision, at)`. `behind(checkpoint)`
 * gives the latest revision seen and since when the oldest revision seen past
 * the checkpoint has waited (a revision etcd made then is not applied yet, so
 * the lag is at least that).
 */
export class SeenRevisions {
  private readonly samples: { revision: number; at: number }[] = [];
  private latest = 0;

  /**
   * `since`: when the checkpoint the dual-run starts from was written. The
   * revisions the first sample finds past it were made since then, not since
   * the sample: a leader that takes over is as far behind as its predecessor left it.
   */
  constructor(private readonly since?: number) {}

  seen(revision: number, at: number): void {
    if (revision <= this.latest) return;
    if (this.latest === 0 && this.since !== undefined) at = Math.min(at, this.since);
    this.latest = revision;
    this.samples.push({ revision, at });
    if (this.samples.length > SAMPLES_KEPT) this.samples.splice(1, 1);
  }

  behind(checkpoint: number): { revision: number; since: number | undefined } {
    while (this.samples.length > 0 && this.samples[0]!.revision <= checkpoint) this.samples.shift();
    return { revision: this.latest, since: this.samples[0]?.at };
  }
}
