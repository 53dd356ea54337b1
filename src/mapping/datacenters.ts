import type { LoadedConfig, MigrationConfig, RuleConfig } from '../config/load.js';
import { compileMapping, type Mapping } from './mapping.js';

/**
 * Several Consul datacenters (issue 11). Consul's KV store is per
 * datacenter, so a copy rule that names `datacenters:` is copied, replicated
 * and verified in each of them, through the one configured agent (`?dc=`).
 *
 * Every datacenter gets its own *view* of the migration: the same rules, with
 * those that do not name it turned into `keep` rules there (their keys stay
 * on etcd as far as that datacenter is concerned, and a longer `from` that is
 * not copied there cannot hand its keys to a shorter one that is). Each view
 * keeps its own state under the state prefix of its datacenter: meta,
 * copy progress, checkpoint, sessions, phases. A configuration without
 * `datacenters:` has one view, equal to the configuration itself.
 */
export interface DatacenterView {
  datacenter: string;
  /** The datacenter of the configured agent (or `target.datacenter`): rules without `datacenters:` go there; the dual-run's leader lock lives there. */
  primary: boolean;
  config: MigrationConfig;
  mapping: Mapping;
  /**
   * The rules that are this datacenter's business, in file order: the copy
   * rules copied here, and (in the primary) the keep and service rules. The
   * view's other keep rules only stand for rules copied elsewhere.
   */
  rules: readonly string[];
}

/** The datacenters a rule is written to, given the primary one. */
export function datacentersOf(rule: Pick<RuleConfig, 'datacenters'>, primary: string): string[] {
  return rule.datacenters ?? [primary];
}

/**
 * A rule as a printed command's `--rule` takes it: with `--datacenter` when the
 * rule is copied to several datacenters, where cutover, rollback and finalize
 * need it (else they stop with datacenter_required).
 */
export function ruleArgument(config: MigrationConfig, rule: string, datacenter: string | undefined): string {
  const several = (config.rules.find((r) => r.name === rule)?.datacenters?.length ?? 1) > 1;
  return several && datacenter ? `${rule} --datacenter ${datacenter}` : rule;
}

/** True when some rule names a datacenter of its own (the views then need the primary's name to be resolved). */
export function namesDatacenters(config: MigrationConfig): boolean {
  return config.rules.some((r) => r.datacenters !== undefined);
}

/** Every datacenter the configuration writes to, the primary first, then in the order the rules name them. */
export function datacenterNames(config: MigrationConfig, primary: string): string[] {
  const names = [primary];
  for (const rule of config.rules) {
    if (rule.action !== 'copy') continue;
    for (const dc of datacentersOf(rule, primary)) if (!names.includes(dc)) names.push(dc);
  }
  // The primary counts only when something is written there.
  const used = (dc: string) => config.rules.some((r) => (r.action === 'copy' ? datacentersOf(r, primary).includes(dc) : dc === primary));
  return names.filter((dc) => dc !== primary || used(dc) || names.length === 1);
}

/** The views of a loaded configuration, the primary's first. */
export function datacenterViews(loaded: LoadedConfig, primary: string): DatacenterView[] {
  if (!namesDatacenters(loaded.config)) return [{ datacenter: primary, primary: true, config: loaded.config, mapping: loaded.mapping, rules: loaded.config.rules.map((r) => r.name) }];
  return datacenterNames(loaded.config, primary).map((datacenter) => {
    const isPrimary = datacenter === primary;
    const rules = loaded.config.rules.map((rule): RuleConfig => {
      const here = rule.action === 'copy' ? datacentersOf(rule, primary).includes(datacenter) : isPrimary;
      if (here) return rule;
      const { service: _service, datacenters: _datacenters, ...rest } = rule;
      return { ...rest, action: 'keep' };
    });
    const config: MigrationConfig = { ...loaded.config, rules };
    // The rules were checked against each other as a whole; a view only turns some into keep rules.
    const mapping = compileMapping({ config, file: loaded.file, document: undefined, lineCounter: undefined });
    const here = loaded.config.rules.filter((rule) => (rule.action === 'copy' ? datacentersOf(rule, primary).includes(datacenter) : isPrimary)).map((r) => r.name);
    return { datacenter, primary: isPrimary, config, mapping, rules: here };
  });
}
