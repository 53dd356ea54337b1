import { isServableKey } from '../mapping/escape.js';
import type { AuditResult } from './audit.js';
import type { FindingCode } from './findings.js';
import { parentFolder, proposeServiceRule, type PatternPrefix, type ServiceProposal } from './patterns.js';
import type { PrefixNode } from './prefix-tree.js';

/**
 * `migrate init` / `audit --suggest-mapping`: a commented draft
 * `migration.yaml` from what an audit found. One rule per top-level prefix
 * (`/app/` → `app/`), `keep` for Kubernetes control planes, `leases: skip`
 * for lock and election prefixes, `action: service` where service
 * registrations live (their format and name/id templates from what the audit
 * saw), and `keys: escape` where keys Consul cannot serve were seen. Every
 * `to` is servable and no two overlap, so the draft loads; it is a starting
 * point to review, not a decision.
 */
export interface DraftOptions {
  /** The migration id (`id:`). */
  id: string;
  /** When the audit ran, for the header. */
  generatedAt: string;
  statePrefix?: string;
}

export interface DraftRule {
  name: string;
  from: string;
  /** The Consul prefix of a `copy` rule; a `keep` rule's is its `from`; a `service` rule has none (`''`). */
  to: string;
  action: 'copy' | 'keep' | 'service';
  keys?: 'escape';
  leases?: 'skip' | 'session';
  /** `action: service`: the rule's `service:` block. */
  service?: Omit<ServiceProposal, 'notes'>;
  comments: string[];
}

export interface MappingDraft {
  rules: DraftRule[];
  /** Notes for the header (what the draft could not cover). */
  notes: string[];
  text: string;
}

// A leading `/` is handled by `to` (stripped) and collisions by distinct `to`s; the other shapes need the escape.
const KEY_CODES: ReadonlySet<FindingCode> = new Set(['key_empty_segment', 'key_dot_segment', 'key_invalid_utf8', 'key_control_character', 'key_trailing_space', 'key_empty']);
const NAME_OK = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** A prefix shown by `formatKey` holds non-printable bytes when it has a `\xNN` escape: it cannot be written as YAML text. */
function isPlainText(prefix: string): boolean {
  return !prefix.includes('\\x');
}

function within(prefix: string, key: string): boolean {
  return key.startsWith(prefix);
}

export function draftMapping(result: AuditResult, options: DraftOptions): MappingDraft {
  const statePrefix = options.statePrefix ?? '_migrate/';
  const notes: string[] = [];
  const rules: DraftRule[] = [];
  const usedNames = new Set<string>();
  const usedTos: string[] = [statePrefix];
  const usedFroms = new Set<string>();
  const { kubernetes, locks, registrations } = result.patterns;

  const uniqueName = (base: string): string => {
    let name = base.replace(/[^A-Za-z0-9_.-]+/g, '-').replace(/^[^A-Za-z0-9]+/, '').replace(/-+$/, '') || 'rule';
    if (!NAME_OK.test(name)) name = `rule-${name}`;
    let candidate = name;
    for (let i = 2; usedNames.has(candidate); i++) candidate = `${name}-${i}`;
    usedNames.add(candidate);
    return candidate;
  };
  const overlaps = (to: string) => usedTos.some((other) => other.startsWith(to) || to.startsWith(other));
  const uniqueTo = (wanted: string, fallbackName: string): { to: string; renamed: boolean } => {
    let base = cleanTo(wanted) || `${fallbackName}/`;
    if (!base.endsWith('/')) base += '/';
    let to = base;
    for (let i = 2; overlaps(to) || !isServableKey(to).ok; i++) to = `${base.slice(0, -1)}-${i}/`;
    usedTos.push(to);
    return { to, renamed: to !== base };
  };

  const keyFindings = result.findings.filter((f) => KEY_CODES.has(f.code));
  const oversize = result.findings.find((f) => f.code === 'value_too_large');

  const { nodes, uncovered } = ruleLevel(result);
  for (const node of nodes) {
    const from = node.prefix;
    if (!isPlainText(from)) {
      notes.push(`${from} (${node.keys} keys) holds bytes that are not printable text: write its rule by hand (a YAML string cannot hold them).`);
      continue;
    }
    const k8s = kubernetes.filter((p) => within(from, p.prefix));
    // Lock folders with live locks: one whose keys hold no lease is data under a lock-like name (Vault's core/leader/), copied as such.
    const lockHere = locks.filter((p) => within(from, p.prefix) && p.leasedKeys > 0);
    const regsHere = registrations.filter((p) => within(from, p.prefix) && isPlainText(p.prefix));
    const name = uniqueName(from.replace(/\//g, ' ').trim().replace(/\s+/g, '-'));
    const comments = [`${node.keys} keys, ${node.valueBytes} bytes of values${node.leasedKeys ? `, ${node.leasedKeys} leased` : ''}`];
    usedFroms.add(from);

    // A Kubernetes control plane at the top level stays on etcd as a whole.
    if (k8s.some((p) => p.prefix === from)) {
      rules.push({ name, from, to: from, action: 'keep', comments: [...comments, 'looks like a Kubernetes control plane: it stays on etcd'] });
      continue;
    }
    // A prefix that holds nothing but service registrations goes to the catalog as a whole.
    const proposal = regsHere.length > 0 && regsHere.reduce((n, p) => n + p.keys, 0) === node.keys ? proposeServiceRule(from, regsHere) : undefined;
    if (proposal) {
      rules.push(serviceRule(name, from, proposal, regsHere, comments));
      continue;
    }
    const { to, renamed } = uniqueTo(from.replace(/^\/+/, ''), name);
    const rule: DraftRule = { name, from, to, action: 'copy', comments };
    if (renamed) comments.push(`"to" renamed: another rule (or the state prefix ${statePrefix}) already uses ${cleanTo(from.replace(/^\/+/, ''))}`);
    // Registration folders beside other keys get service rules of their own (the longest `from` wins).
    const nested = new Map<string, PatternPrefix[]>();
    const unregistered: PatternPrefix[] = [];
    for (const p of regsHere) {
      const at = serviceFrom(from, p.prefix);
      if (at === undefined) unregistered.push(p);
      else nested.set(at, [...(nested.get(at) ?? []), p]);
    }
    for (const [at, list] of nested) {
      const nestedProposal = usedFroms.has(at) ? undefined : proposeServiceRule(at, list);
      if (!nestedProposal) {
        unregistered.push(...list);
        continue;
      }
      usedFroms.add(at);
      const keys = list.reduce((n, p) => n + p.keys, 0);
      rules.push(serviceRule(uniqueName(`${name}-${lastSegment(at)}`), at, nestedProposal, list, [`${keys} keys that look like service registrations`]));
    }
    // Lock folders below the prefix that hold all of its leased keys (an election per shard): the prefix's own rule
    // skips leased keys, rather than one nested rule per folder, each with a "to" of its own (16 shards made 16 rules).
    const nestedLocks = lockHere.filter((p) => p.prefix !== from && isPlainText(p.prefix) && !k8s.some((k) => within(k.prefix, p.prefix)) && !usedFroms.has(p.prefix));
    const outermost = nestedLocks.filter((p) => !nestedLocks.some((q) => q !== p && within(q.prefix, p.prefix)));
    const locksHoldAllLeases = outermost.length > 0 && unregistered.length === 0 && outermost.reduce((n, p) => n + p.leasedKeys, 0) >= node.leasedKeys;
    if (lockHere.some((p) => p.prefix === from)) {
      rule.leases = 'skip';
      comments.push('looks like locks / leader elections: leased keys are not copied; applications recreate them in Consul');
    } else if (locksHoldAllLeases) {
      rule.leases = 'skip';
      comments.push(`its leased keys are all under lock / leader-election folders (${outermost.slice(0, 3).map((p) => p.prefix).join(', ')}${outermost.length > 3 ? `, and ${outermost.length - 3} more` : ''}): not copied; applications recreate them in Consul`);
    } else if (unregistered.length > 0) {
      rule.leases = 'session';
      const urls = unregistered.some((p) => p.formats?.length && p.formats.every((f) => f === 'url'));
      comments.push(`service registrations under ${unregistered.slice(0, 3).map((p) => p.prefix).join(', ')}: mirrored as session-held keys; ${urls ? 'values with a URL scheme fit no `service.format`' : 'an `action: service` rule needs a folder that holds only registrations'}`);
    }
    const badKeys = keyFindings.filter((f) => f.examples.some((e) => e.key !== undefined && within(from, e.key)));
    if (badKeys.length > 0) {
      rule.keys = 'escape';
      comments.push(`keys Consul cannot serve as they are (${badKeys.map((f) => f.code).join(', ')}): escaped reversibly`);
    }
    if (oversize?.examples.some((e) => e.key !== undefined && within(from, e.key))) {
      comments.push('holds values over the target\'s size limit: the audit reports them as blockers until they shrink or move');
    }
    rules.push(rule);

    // Nested patterns get their own, longer rule (the longest `from` wins).
    for (const p of k8s) {
      if (!isPlainText(p.prefix)) continue;
      rules.push({ name: uniqueName(`${name}-${lastSegment(p.prefix)}`), from: p.prefix, to: p.prefix, action: 'keep', comments: [`${p.keys} keys that look like a Kubernetes control plane: they stay on etcd`] });
    }
    for (const p of locksHoldAllLeases ? [] : lockHere) {
      if (p.prefix === from || !isPlainText(p.prefix) || k8s.some((k) => within(k.prefix, p.prefix)) || usedFroms.has(p.prefix)) continue;
      usedFroms.add(p.prefix);
      // Kept on etcd, not copied to a Consul prefix of its own (two copy rules may not share one), where the application would never look.
      rules.push({ name: uniqueName(`${name}-${lastSegment(p.prefix)}`), from: p.prefix, to: p.prefix, action: 'keep', comments: [`${p.keys} ${p.keys === 1 ? 'key that looks' : 'keys that look'} like locks / leader elections: they stay on etcd; applications take their locks again in Consul (sessions) when they move`] });
    }
  }
  notes.push(...uncovered);
  if (result.scope.unreadable.length > 0) notes.push(`The audit could not read ${result.scope.unreadable.join(', ')}: rules for it are missing.`);
  rules.sort((a, b) => (a.from < b.from ? -1 : a.from > b.from ? 1 : 0));
  return { rules, notes, text: renderDraft(result, options, rules, notes, statePrefix) };
}

/**
 * The prefixes that become rules: the top-level ones, or with `--prefix` the
 * ones just below each audited prefix (so an audit of `/team-a/` drafts
 * `/team-a/app/`, `/team-a/locks/`…). Also says what they leave uncovered.
 */
function ruleLevel(result: AuditResult): { nodes: PrefixNode[]; uncovered: string[] } {
  const uncovered: string[] = [];
  const describeOther = (node: PrefixNode, where: string) => {
    if (node.other && node.other.prefixes > 0) uncovered.push(`${node.other.prefixes} more prefixes ${where} (${node.other.keys} keys) are not listed: the audit keeps the largest ${node.children.length}. Add rules for them.`);
  };
  if (result.scope.prefixes.length === 0) {
    describeOther(result.prefixes, 'at the top level');
    if (result.prefixes.directKeys > 0) uncovered.push(`${result.prefixes.directKeys} keys sit at the top level outside any prefix: add rules for them, or they stay unmapped.`);
    return { nodes: result.prefixes.children, uncovered };
  }
  const nodes: PrefixNode[] = [];
  const all: PrefixNode[] = [];
  const walk = (node: PrefixNode) => {
    for (const child of node.children) {
      all.push(child);
      walk(child);
    }
  };
  walk(result.prefixes);
  for (const scope of result.scope.prefixes) {
    const level = levelsOf(scope) + 1;
    const inside = all.filter((n) => n.depth === level && n.prefix.startsWith(scope));
    nodes.push(...inside);
    const parent = all.find((n) => n.prefix === scope);
    if (parent) {
      describeOther(parent, `under ${scope}`);
      if (parent.directKeys > 0) uncovered.push(`${parent.directKeys} keys sit directly under ${scope}, outside its sub-prefixes: add a rule for them, or they stay unmapped.`);
    } else if (inside.length === 0) {
      uncovered.push(`nothing below ${scope} within the audit's depth: audit with a larger --depth, or write its rules by hand.`);
    }
  }
  return { nodes, uncovered };
}

/**
 * Where a service rule for a registration folder inside the copy prefix
 * `from` starts: the folder's parent, so `{1}` names the service
 * (`/app/services/web/` → `/app/services/`), or the folder itself when its
 * parent is `from`. Undefined when the registrations sit directly in `from`
 * beside other keys: no rule can take them without taking those.
 */
function serviceFrom(from: string, folder: string): string | undefined {
  if (folder === from) return undefined;
  const parent = parentFolder(folder);
  return parent.length > from.length ? parent : folder;
}

/** A service rule over registration folders, with what the reviewer should know in its comments. */
function serviceRule(name: string, from: string, proposal: ServiceProposal, registrations: readonly PatternPrefix[], comments: string[]): DraftRule {
  const { notes, ...service } = proposal;
  const formats = [...new Set(registrations.flatMap((p) => p.formats ?? []))];
  const out = [
    ...comments,
    `service registrations (values: ${formats.join(', ')}): each key becomes an instance in Consul's catalog, on the migrator's agent; a leased key's instance gets a TTL check that \`migrate dualrun\` keeps passing while the etcd lease lives`,
    ...notes,
  ];
  // The name template always points at the folder holding the instance, unless it is literal.
  const names = service.name.includes('{') ? [...new Set(registrations.map((p) => lastSegment(p.prefix)))] : [];
  const odd = names.filter((n) => !/^[A-Za-z0-9-]+$/.test(n));
  if (odd.length > 0) out.push(`service names ${odd.slice(0, 3).join(', ')}${odd.length > 3 ? ' …' : ''} have characters other than letters, digits and dashes: Consul registers them but logs a DNS warning`);
  return { name, from, to: '', action: 'service', service, comments: out };
}

/** Levels of a prefix as the prefix tree counts them (a leading "/" belongs to the first segment). */
function levelsOf(prefix: string): number {
  const body = prefix.startsWith('/') ? prefix.slice(1) : prefix;
  return body.split('/').length - 1;
}

/** The part of a `to` Consul can serve: no empty, `.` or `..` segments, no control characters. */
function cleanTo(text: string): string {
  const segments = text.split('/');
  const trailing = text.endsWith('/');
  const kept = segments.filter((s) => s !== '' && s !== '.' && s !== '..').map((s) => s.replace(/[\u0000-\u001f\u007f%~]/g, '-').trim()).filter(Boolean);
  if (kept.length === 0) return '';
  return `${kept.join('/')}${trailing ? '/' : ''}`;
}

function lastSegment(prefix: string): string {
  const parts = prefix.split('/').filter(Boolean);
  return parts[parts.length - 1] ?? 'nested';
}

function yamlString(text: string): string {
  return JSON.stringify(text);
}

function renderDraft(result: AuditResult, options: DraftOptions, rules: DraftRule[], notes: string[], statePrefix: string): string {
  const lines: string[] = [];
  lines.push('# migration.yaml: a DRAFT written by `migrate init` from an audit of');
  lines.push(`#   etcd ${result.source.version} at ${result.source.endpoint}, revision ${result.source.revision}, on ${options.generatedAt}.`);
  lines.push('# Review every rule before copying: check it with `migrate audit -c migration.yaml`');
  lines.push('# and `migrate plan`. Rules match etcd keys by byte prefix; the longest `from` wins.');
  for (const note of notes) lines.push(`# NOTE: ${note}`);
  lines.push('version: 1');
  lines.push(`id: ${yamlString(options.id)}`);
  lines.push('');
  lines.push('# Connections come from flags and the environment (ETCDCTL_*, CONSUL_HTTP_*); uncomment to pin them here.');
  lines.push('# source:');
  lines.push(`#   endpoints: [${yamlString(result.source.endpoint.split(',')[0] ?? '')}]`);
  lines.push('# target:');
  lines.push('#   address: "http://127.0.0.1:8500"');
  lines.push('#   tokenEnv: CONSUL_HTTP_TOKEN');
  if (statePrefix !== '_migrate/') {
    lines.push('state:');
    lines.push(`  prefix: ${yamlString(statePrefix)}`);
  }
  lines.push('');
  lines.push('defaults:');
  lines.push('  keys: reject      # keys Consul cannot serve are reported, not copied (escape: a reversible encoding)');
  lines.push('  leases: session   # leased keys become keys held by a Consul session (TTL clamped to 10 s–24 h)');
  if (result.scope.prefixes.length === 0) lines.push('  unmapped: error   # a key outside every rule is a blocker: decide where it goes');
  // A draft of part of the keyspace (--prefix): the rest stays on etcd, not a blocker of this migration.
  else lines.push(`  unmapped: skip    # the draft covers ${result.scope.prefixes.join(', ')} only: keys elsewhere stay on etcd`);
  lines.push('');
  if (rules.length === 0) {
    lines.push('# The audit found no prefixes to map.');
    lines.push('rules: []');
    return `${lines.join('\n')}\n`;
  }
  lines.push('rules:');
  for (const rule of rules) {
    for (const comment of rule.comments) lines.push(`  # ${comment.replace(/\n/g, ' ')}`);
    lines.push(`  - name: ${yamlString(rule.name)}`);
    lines.push(`    from: ${yamlString(rule.from)}`);
    if (rule.action === 'keep') lines.push('    action: keep');
    else if (rule.service) {
      lines.push('    action: service');
      lines.push('    service:');
      lines.push(`      format: ${rule.service.format}`);
      if (rule.service.fields) lines.push(`      fields: { address: ${yamlString(rule.service.fields.address)}, port: ${yamlString(rule.service.fields.port)} }`);
      lines.push(`      name: ${yamlString(rule.service.name)}   # {1}: the first segment after from, {-1}: the last`);
      lines.push(`      id: ${yamlString(rule.service.id)}   # unique on the agent`);
    } else lines.push(`    to: ${yamlString(rule.to)}`);
    if (rule.keys) lines.push(`    keys: ${rule.keys}`);
    if (rule.leases) lines.push(`    leases: ${rule.leases}`);
  }
  return `${lines.join('\n')}\n`;
}

