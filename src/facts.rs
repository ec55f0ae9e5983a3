//! What the store contributes to a decision: the stored users (with their
//! roles as parents) and accounts (with their role groups), looked up for
//! exactly what one request needs, and the refusal of inline entities that
//! cedard owns.
//!
//! For a request this module reads the principal, the resource, and the
//! account the resource names (its `account` attribute, or an `Account`
//! parent) — point lookups in one read transaction, never a scan. An inline
//! entity that is a stored user or account, a role of a stored account, or a
//! claim to hold such a role is refused: one ownership check, whatever route
//! the entities came by. This module knows nothing about HTTP; it turns store
//! records into Cedar entities (through `model`) and leaves the decision to
//! `authz`.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use cedar_policy::{Entities, Entity, EntityUid, EvalResult};
use serde_json::value::RawValue;

use crate::authz::{self, InputError, SetAside};
use crate::identity::Verified;
use crate::model::{
    account_entity, account_uid, user_entity, user_uid, ModelError, RoleCatalog, TYPES,
};
use crate::policy::memo::Assembled;
use crate::policy::{describe, PolicySnapshot};
use crate::store::{Changed, Fault, ReadView, Reads, Store};

/// Why the store's entities could not be contributed.
#[derive(Debug, thiserror::Error)]
pub enum EntityError {
    /// The request's own input is wrong (a 400).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The store failed (a 503).
    #[error(transparent)]
    Store(#[from] Fault),
    /// The loaded schema does not describe the stored facts (a 503 until the
    /// schema is fixed).
    #[error(transparent)]
    Schema(#[from] ModelError),
    /// A verified token's claims do not fit the schema where its issuer
    /// maps them (a 401 `token_claims`).
    #[error("{0}")]
    Claims(String),
}

/// The inline entities of a request, as they arrived: the raw JSON text of
/// the array, decoded through the snapshot's memo (every door sends text:
/// the HTTP bodies borrow it, the console serialises its form's value).
#[derive(Clone, Copy)]
pub enum Inline<'a> {
    /// None sent.
    None,
    /// The raw JSON text of the array.
    Raw(&'a RawValue),
}

impl<'a> Inline<'a> {
    /// Raw inline entities as a body carries them: absent, or JSON `null`,
    /// is none.
    pub fn raw(raw: Option<&'a RawValue>) -> Self {
        match raw {
            Some(raw) if raw.get().trim() != "null" => Inline::Raw(raw),
            _ => Inline::None,
        }
    }
}

/// Stored entities already built and checked against a snapshot's schema,
/// valid at one store generation.
///
/// Any committed write bumps the store's generation. When the memo moves to
/// a newer generation it forgets the entities the writes in between changed
/// ([`Store::changed_between`]: this process's own recent writes), or
/// everything when it does not know what they changed (another replica's
/// writes, or more than the store remembers). So an entry is never older
/// than the last acknowledged write: a decision gets exactly what a fresh
/// read would build, and a write costs the memo only what it changed. The memo exists
/// because building a user and an account entity and checking them against
/// the schema costs more than the decision itself (see `benches/store.rs`).
/// A `std` mutex: held for a map lookup or insert, never across an `.await`.
#[derive(Debug)]
pub struct EntityMemo {
    inner: Mutex<Memo>,
    capacity: usize,
}

impl Default for EntityMemo {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[derive(Debug, Default)]
struct Memo {
    /// The store generation the entries were read at (or after).
    generation: u64,
    /// The policy revision whose schema they were checked against.
    revision: String,
    entries: HashMap<EntityUid, Entity>,
}

impl EntityMemo {
    /// How many entities are remembered before the memo starts over, unless
    /// told otherwise: a directory of 100,000 users in 10,000 accounts fits.
    pub const DEFAULT_CAPACITY: usize = 262_144;

    /// A memo of at most `capacity` entities.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity,
        }
    }

    fn get(
        &self,
        store: &Store,
        generation: u64,
        revision: &str,
        uid: &EntityUid,
    ) -> Option<Entity> {
        let mut memo = self.inner.lock().ok()?;
        if memo.revision != revision || generation < memo.generation {
            return None;
        }
        memo.advance(store, generation);
        memo.entries.get(uid).cloned()
    }

    fn put(&self, store: &Store, generation: u64, revision: &str, entity: &Entity) {
        let Ok(mut memo) = self.inner.lock() else {
            return;
        };
        if generation < memo.generation {
            // Built by a request that started before a newer write; newer
            // requests must not see it.
            return;
        }
        if memo.revision != revision || memo.entries.len() >= self.capacity {
            crate::policy::memo::drop_elsewhere(std::mem::take(&mut memo.entries));
            memo.generation = generation;
            memo.revision = revision.to_owned();
        }
        memo.advance(store, generation);
        memo.entries.insert(entity.uid(), entity.clone());
    }
}

impl Memo {
    /// Moves to `generation`, forgetting what the writes since changed (all
    /// of it, when the store cannot say).
    fn advance(&mut self, store: &Store, generation: u64) {
        if generation <= self.generation {
            return;
        }
        match store.changed_between(self.generation, generation) {
            Some(changed) => {
                for c in changed {
                    let uid = match &c {
                        Changed::User(id) => user_uid(id),
                        Changed::Account(id) => account_uid(id),
                        // No entity is built from keys or invites.
                        Changed::Key(_) | Changed::Invite(_) => continue,
                    };
                    self.entries.remove(&uid);
                }
            }
            None => crate::policy::memo::drop_elsewhere(std::mem::take(&mut self.entries)),
        }
        self.generation = generation;
    }
}

/// What a decision needs to read the store: the snapshot it evaluates
/// against, the store, and the caches. A read transaction is opened only if
/// the memo cannot answer.
pub struct Facts<'a> {
    snapshot: &'a PolicySnapshot,
    catalog: &'a RoleCatalog,
    memo: &'a EntityMemo,
    store: &'a Store,
    /// The store generation when this request started: everything read later
    /// is at least this new, so entries built now are valid for it.
    generation: u64,
    view: OnceCell<ReadView>,
    /// The most inline entities one call may send.
    max_inline: usize,
    /// Read every stored entity afresh, never from the memo (checks made
    /// inside a write transaction).
    fresh: bool,
    /// Read through this instead of a read view of our own: a write
    /// transaction, whose own view a check made inside it must see.
    through: Option<&'a dyn Reads>,
}

impl<'a> Facts<'a> {
    /// The facts of one request, decided against `snapshot`.
    pub fn new(
        snapshot: &'a PolicySnapshot,
        catalog: &'a RoleCatalog,
        memo: &'a EntityMemo,
        store: &'a Store,
        max_inline: usize,
    ) -> Self {
        Self {
            snapshot,
            catalog,
            memo,
            store,
            generation: store.generation(),
            view: OnceCell::new(),
            max_inline,
            fresh: false,
            through: None,
        }
    }

    /// The snapshot these facts are built for.
    pub fn snapshot(&self) -> &'a PolicySnapshot {
        self.snapshot
    }

    /// The store revision these facts are at least as new as.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The same facts, read from the store afresh: the memo is neither read
    /// nor filled. For checks made inside a write transaction, where an entry
    /// tagged with the generation of a write that has just committed could
    /// otherwise be older than the state the transaction sees.
    pub fn fresh(mut self) -> Self {
        self.fresh = true;
        self
    }

    /// The same facts, read fresh through `reads` (a write transaction):
    /// the check sees exactly the state the transaction commits over, and
    /// takes no second connection or transaction.
    pub fn through(mut self, reads: &'a dyn Reads) -> Self {
        self.fresh = true;
        self.through = Some(reads);
        self
    }

    /// Refuses more inline entities than the limit, before any is decoded.
    fn check_count(&self, inline: Inline<'_>) -> Result<(), EntityError> {
        let count = match inline {
            Inline::None => return Ok(()),
            Inline::Raw(raw) => {
                // Every entity takes more than 16 bytes of JSON, so a shorter
                // text cannot be over the limit and is not counted: the
                // common small request pays nothing for the check.
                if raw.get().len() <= self.max_inline.saturating_mul(16) {
                    return Ok(());
                }
                match serde_json::from_str::<Vec<serde::de::IgnoredAny>>(raw.get()) {
                    Ok(items) => items.len(),
                    // Not an array: the decoder reports it.
                    Err(_) => return Ok(()),
                }
            }
        };
        if count > self.max_inline {
            return Err(InputError::new(
                "entities",
                format!(
                    "at most {} inline entities are accepted in one call, this one has {count}",
                    self.max_inline
                ),
            )
            .into());
        }
        Ok(())
    }

    /// One read transaction for the whole request, opened on first use.
    fn view(&self) -> Result<&dyn Reads, Fault> {
        if let Some(reads) = self.through {
            return Ok(reads);
        }
        if let Some(v) = self.view.get() {
            return Ok(v.as_ref());
        }
        let v = self.store.read()?;
        Ok(self.view.get_or_init(|| v).as_ref())
    }

    /// Refuses when what this process knows of the store may be older than
    /// its staleness bound (a replica cut off from the shared database), so
    /// that no stored fact is answered from memory or from a view that may
    /// be behind. A check made through a write transaction reads the
    /// database itself.
    fn current(&self) -> Result<(), Fault> {
        match self.through {
            Some(_) => Ok(()),
            None => self.store.current(),
        }
    }

    fn remembered(&self, uid: &EntityUid) -> Option<Entity> {
        // Once the file is known damaged, nothing read from it is used, not
        // even what was remembered before: the read that follows is refused.
        if self.fresh || self.store.damage().is_some() {
            return None;
        }
        self.memo.get(
            self.store,
            self.generation,
            &self.snapshot.revision.sha256,
            uid,
        )
    }

    fn stored(&self, uid: &EntityUid) -> Result<bool, Fault> {
        let ty = uid.type_name();
        let id = uid.id().unescaped();
        if ty == &TYPES.user || ty == &TYPES.account {
            self.current()?;
            if self.remembered(uid).is_some() {
                return Ok(true);
            }
            if ty == &TYPES.user {
                self.view()?.has_user(id)
            } else {
                self.view()?.has_account(id)
            }
        } else if ty == &TYPES.role {
            match id.split_once('/') {
                Some((account, _)) => self.stored(&account_uid(account)),
                None => Ok(false),
            }
        } else {
            Ok(false)
        }
    }

    /// Decodes the inline entities (refusing ones cedard supplies, see
    /// [`Facts::refuse_supplied`]) and adds the stored entities of each
    /// `(principal, resource)` pair: the principal, the resource, and the
    /// account the resource names.
    ///
    /// With nothing inline and nothing stored to add (a question about the
    /// entity data files' entities alone), the snapshot's base entities are
    /// lent, not copied: copying them costs more than deciding once they
    /// are thousands.
    pub fn entities(
        &self,
        inline: Inline<'_>,
        pairs: &[(&EntityUid, &EntityUid)],
    ) -> Result<Cow<'a, Entities>, EntityError> {
        self.check_count(inline)?;
        let raw = match inline {
            Inline::Raw(raw) => raw,
            Inline::None => {
                let base = &self.snapshot.base_entities;
                let extra = self.stored_for(pairs, |uid| base.get(uid))?;
                if extra.is_empty() {
                    return Ok(Cow::Borrowed(base));
                }
                // Each stored entity was checked against this snapshot's
                // schema when it was built (see `lookup`), so the merge need
                // not check again.
                return base
                    .clone()
                    .add_entities(extra, None)
                    .map(Cow::Owned)
                    .map_err(|e| EntityError::Schema(ModelError(describe(&e))));
            }
        };
        self.raw_entities(raw, pairs).map(Cow::Owned)
    }

    /// `entities` with each token subject's entity as the token makes it:
    /// cedard's own facts for it (stored, or of the entity data files; its
    /// parents only from those) with the token's mapped claims added as
    /// attributes, checked against the schema whole. A token subject sent
    /// inline is refused (cedard supplies it), and a claim that does not
    /// fit, or that would replace an attribute cedard's facts give, refuses
    /// the call naming the claim: never half-applied.
    pub fn with_token_subjects(
        &self,
        entities: Cow<'a, Entities>,
        subjects: &[(&EntityUid, &Verified)],
    ) -> Result<Cow<'a, Entities>, EntityError> {
        let mut updated: Vec<Entity> = Vec::new();
        let mut seen: HashSet<&EntityUid> = HashSet::new();
        for (uid, token) in subjects {
            if !seen.insert(*uid) {
                continue;
            }
            let present = entities.get(uid);
            let known = self.lookup(uid)?.is_some() || self.snapshot.data.origin(uid).is_some();
            if present.is_some() && !known {
                return Err(InputError::new(
                    "entities",
                    format!("`{uid}` is the subject of the principal token: cedard supplies it (its stored facts and the token's claims); do not send it inline"),
                )
                .into());
            }
            if token.attributes.is_empty() {
                continue;
            }
            let base = match present {
                Some(e) => e
                    .to_json_value()
                    .map_err(|e| EntityError::Schema(ModelError(describe(&e))))?,
                None => serde_json::json!({
                    "uid": {"type": uid.type_name().to_string(), "id": uid.id().unescaped()},
                    "attrs": {},
                    "parents": [],
                }),
            };
            updated.push(self.claimed(uid, base, token)?);
        }
        if updated.is_empty() {
            return Ok(entities);
        }
        // Each entity was checked against the schema as it was built.
        entities
            .into_owned()
            .upsert_entities(updated, None)
            .map(Cow::Owned)
            .map_err(|e| EntityError::Schema(ModelError(describe(&e))))
    }

    /// The entity `base` (Cedar's JSON form) with `token`'s mapped claims
    /// as attributes, built against the schema.
    fn claimed(
        &self,
        uid: &EntityUid,
        base: serde_json::Value,
        token: &Verified,
    ) -> Result<Entity, EntityError> {
        let with = |claims: &[(String, serde_json::Value)]| -> Result<Entity, String> {
            let mut json = base.clone();
            let attrs = json
                .get_mut("attrs")
                .and_then(serde_json::Value::as_object_mut)
                .ok_or_else(|| "the entity has no attributes object".to_owned())?;
            for (attribute, value) in claims {
                if attrs.contains_key(attribute) {
                    return Err(format!(
                        "cedard's facts already give `{uid}` the attribute `{attribute}`"
                    ));
                }
                attrs.insert(attribute.clone(), value.clone());
            }
            Entity::from_json_value(json, Some(&self.snapshot.schema)).map_err(|e| describe(&e))
        };
        with(&token.attributes).map_err(|whole| {
            // Name the first claim that does not fit on its own.
            let culprit = token
                .attributes
                .iter()
                .zip(&token.claims)
                .find_map(|(pair, claim)| {
                    with(std::slice::from_ref(pair))
                        .err()
                        .map(|m| format!("the claim `{claim}` (mapped to `{}`): {m}", pair.0))
                });
            EntityError::Claims(format!(
                "the token's claims do not fit the schema for `{uid}`: {}",
                culprit.unwrap_or(whole)
            ))
        })
    }

    /// [`Facts::entities`] for inline entities as raw JSON text: decoded and
    /// assembled through the snapshot's memo, refused where cedard stores
    /// one of them or one claims a role of a stored account.
    fn raw_entities(
        &self,
        raw: &RawValue,
        pairs: &[(&EntityUid, &EntityUid)],
    ) -> Result<Entities, EntityError> {
        let (uids, entities) = match authz::remembered_set(self.snapshot, raw) {
            Some(Assembled { uids, entities }) => {
                self.refuse_supplied(&uids)?;
                let extra = self.stored_for(pairs, |uid| entities.get(uid))?;
                let entities = if extra.is_empty() {
                    entities
                } else {
                    // `extra` was checked against the schema when built.
                    entities
                        .add_entities(extra, None)
                        .map_err(|e| InputError::new("entities", describe(&e)))?
                };
                (uids, entities)
            }
            None => {
                // Not remembered: the stored entities join the inline ones
                // in the one hierarchy computation of the assembly. What is
                // present is what the assembled set would hold: the inline
                // entities, then the snapshot's own (actions, data files).
                let decoded = authz::decode_entities_raw(self.snapshot, raw)?;
                let uids: Vec<EntityUid> = decoded.iter().map(Entity::uid).collect();
                self.refuse_supplied(&uids)?;
                let by_uid: HashMap<&EntityUid, &Entity> = uids.iter().zip(&decoded).collect();
                let base = &self.snapshot.base_entities;
                let extra = self.stored_for(pairs, |uid| {
                    by_uid.get(uid).copied().or_else(|| base.get(uid))
                })?;
                drop(by_uid);
                let entities = authz::assemble_with(self.snapshot, raw, decoded, extra)?;
                (uids, entities)
            }
        };
        self.refuse_claims(&uids, &entities)?;
        Ok(entities)
    }

    /// The inline entities `raw` holds without those cedard supplies itself
    /// (a stored user or account, a role of a stored account, an entity of
    /// the entity data files), and a note for each one left out naming the
    /// attributes it carried: for a caller whose surplus is ignored
    /// ([`crate::pdp::Surplus`]), so that cedard's facts count and the
    /// caller's do not, without refusing the question. `None` when none is
    /// left out (an array that cannot be read is left whole, for the
    /// decoding that follows to refuse).
    pub fn set_aside_known(
        &self,
        raw: &RawValue,
    ) -> Result<(Option<Box<RawValue>>, Vec<SetAside>), EntityError> {
        #[derive(serde::Deserialize)]
        struct Head {
            uid: serde_json::Value,
            #[serde(default)]
            attrs: serde_json::Map<String, serde_json::Value>,
        }
        let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
            return Ok((None, Vec::new()));
        };
        let mut kept = Vec::with_capacity(items.len());
        let mut notes = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let head = serde_json::from_str::<Head>(item.get()).ok();
            let uid = head
                .as_ref()
                .and_then(|h| authz::parse_uid_in(self.snapshot, "uid", &h.uid).ok());
            let known = match &uid {
                Some(uid) => self.snapshot.data.origin(uid).is_some() || self.stored(uid)?,
                None => false,
            };
            match (known, uid, head) {
                (true, Some(uid), Some(head)) => notes.push(SetAside {
                    field: format!("entities[{i}]"),
                    names: sorted(head.attrs.keys().cloned().collect()),
                    why: format!(
                        "cedard supplies `{uid}` itself: its own facts are used, never a caller's"
                    ),
                }),
                _ => kept.push(item),
            }
        }
        if notes.is_empty() {
            return Ok((None, notes));
        }
        let text =
            serde_json::to_string(&kept).map_err(|e| InputError::new("entities", e.to_string()))?;
        let kept =
            RawValue::from_string(text).map_err(|e| InputError::new("entities", e.to_string()))?;
        Ok((Some(kept), notes))
    }

    /// The one ownership check, first half, on the inline entities' uids
    /// before anything is merged: an entity cedard supplies itself (a
    /// stored user or account, a role of a stored account, an entity of the
    /// entity data files) is refused, naming `entities[i]`.
    fn refuse_supplied(&self, uids: &[EntityUid]) -> Result<(), EntityError> {
        for (i, uid) in uids.iter().enumerate() {
            if let Some((file, j)) = self.snapshot.data.origin(uid) {
                return Err(InputError::new(
                    format!("entities[{i}]"),
                    format!("`{uid}` is defined by the entity data file {file} (entities[{j}]); do not send it inline, cedard supplies it"),
                )
                .into());
            }
            if self.stored(uid)? {
                return Err(owned(i, uid));
            }
        }
        Ok(())
    }

    /// The one ownership check, second half, on the assembled hierarchy: an
    /// inline entity that claims a role of a stored account, directly or
    /// through other inline entities, is refused.
    fn refuse_claims(&self, uids: &[EntityUid], entities: &Entities) -> Result<(), EntityError> {
        for (i, uid) in uids.iter().enumerate() {
            let roles: Vec<&EntityUid> = entities
                .ancestors(uid)
                .map(|a| a.filter(|p| p.type_name() == &TYPES.role).collect())
                .unwrap_or_default();
            for role in roles {
                if self.stored(role)? {
                    return Err(claims(i, uid, role));
                }
            }
        }
        Ok(())
    }

    /// The stored entities each `(principal, resource)` pair needs: the
    /// principal, the resource, and the account the resource names, each
    /// unless it was sent inline (`present`).
    fn stored_for<'e>(
        &self,
        pairs: &[(&EntityUid, &EntityUid)],
        present: impl Fn(&EntityUid) -> Option<&'e Entity>,
    ) -> Result<Vec<Entity>, EntityError> {
        // Where the schema has no `Account` type no resource names one, and
        // reading the resource's parents (a copy of the entity, which may
        // hold thousands of ancestors or large records) is skipped.
        let accounts = self.snapshot.type_names.contains_key(crate::model::ACCOUNT);
        let mut wanted: Vec<EntityUid> = Vec::with_capacity(pairs.len() * 3);
        for (principal, resource) in pairs {
            wanted.push((*principal).clone());
            wanted.push((*resource).clone());
            if !accounts {
                continue;
            }
            if let Some(account) = present(resource).and_then(account_of) {
                wanted.push(account);
            }
        }
        let mut seen: HashSet<EntityUid> = HashSet::with_capacity(wanted.len());
        let mut extra = Vec::new();
        for uid in wanted {
            if present(&uid).is_some() || !seen.insert(uid.clone()) {
                continue;
            }
            if let Some(e) = self.lookup(&uid)? {
                extra.push(e);
            }
        }
        Ok(extra)
    }

    /// The stored entity for `uid`, if cedard stores it: from the memo, or
    /// read, built, and checked against the snapshot's schema (a stored
    /// record that no longer conforms, say after a schema edit, fails the
    /// request rather than being decided on).
    fn lookup(&self, uid: &EntityUid) -> Result<Option<Entity>, EntityError> {
        let ty = uid.type_name();
        if ty != &TYPES.user && ty != &TYPES.account {
            return Ok(None);
        }
        self.current()?;
        if let Some(e) = self.remembered(uid) {
            return Ok(Some(e));
        }
        let id = uid.id().unescaped();
        let view = self.view()?;
        let entity = if ty == &TYPES.user {
            let Some(user) = view.user(id)? else {
                return Ok(None);
            };
            let roles = view.roles_of(id)?;
            user_entity(&user, &roles)?
        } else {
            let Some(account) = view.account(id)? else {
                return Ok(None);
            };
            let names = self.catalog.roles(self.snapshot)?;
            account_entity(&account, &names)?
        };
        // `add_entities` checks conformance without also adding the schema's
        // action entities, as `from_entities` would.
        if let Err(e) =
            Entities::empty().add_entities([entity.clone()], Some(&self.snapshot.schema))
        {
            return Err(EntityError::Schema(ModelError(format!(
                "stored `{uid}` does not conform to the loaded schema: {}",
                describe(&e)
            ))));
        }
        if !self.fresh {
            self.memo.put(
                self.store,
                self.generation,
                &self.snapshot.revision.sha256,
                &entity,
            );
        }
        Ok(Some(entity))
    }
}

/// `names`, in order.
fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// The 400 for an inline entity that cedard stores.
fn owned(i: usize, uid: &EntityUid) -> EntityError {
    InputError::new(
        format!("entities[{i}]"),
        format!("`{uid}` is stored by cedard; do not send it inline, cedard supplies it"),
    )
    .into()
}

/// The 400 for an inline entity claiming a role of a stored account.
fn claims(i: usize, uid: &EntityUid, role: &EntityUid) -> EntityError {
    InputError::new(
        format!("entities[{i}]"),
        format!(
            "`{uid}` claims the role `{role}` of an account stored by cedard; cedard owns its memberships"
        ),
    )
    .into()
}

/// The account a resource belongs to: its `account` attribute, else an
/// `Account` parent.
fn account_of(entity: &Entity) -> Option<EntityUid> {
    if let Some(Ok(EvalResult::EntityUid(uid))) = entity.attr("account") {
        if uid.type_name() == &TYPES.account {
            return Some(uid);
        }
    }
    let (_, _, parents) = entity.clone().into_inner();
    parents
        .into_iter()
        .find(|p| p.type_name() == &TYPES.account)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::Value;
    use std::sync::Arc;

    use super::*;
    use crate::model::{user_uid, ADMIN_ROLE};
    use crate::policy::{self, Sources};
    use crate::store::User;

    impl EntityMemo {
        fn holds(&self, uid: &EntityUid) -> bool {
            self.inner
                .lock()
                .map(|m| m.entries.contains_key(uid))
                .unwrap_or(false)
        }
    }

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            email: format!("{id}@example.com"),
            email_verified: true,
            name: None,
            created_at: 0,
        }
    }

    /// The repository's policy pack and an empty store in a folder of its
    /// own (kept alive by the caller).
    fn fixture() -> (Arc<PolicySnapshot>, tempfile::TempDir, Store) {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let snapshot = policy::load(
            &Sources {
                policies: root.join("policies"),
                schema: root.join("schema"),
                ..Default::default()
            },
            1,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&dir.path().join("d.redb")).unwrap_or_else(|e| panic!("{e}"));
        (snapshot, dir, store)
    }

    #[test]
    fn a_write_evicts_what_it_changed_and_keeps_the_rest() {
        let (snapshot, _dir, store) = fixture();
        for id in ["olga", "ann", "bob"] {
            store
                .write(|w| w.sign_up(&user(id), ADMIN_ROLE).map(|_| ()))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let (catalog, memo) = (RoleCatalog::default(), EntityMemo::default());
        let entities = |u: &str| {
            let facts = Facts::new(&snapshot, &catalog, &memo, &store, 100);
            facts
                .entities(Inline::None, &[(&user_uid(u), &account_uid("olga"))])
                .map(|e| e.into_owned())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        entities("ann");
        entities("bob");
        let (ann, bob, olga) = (user_uid("ann"), user_uid("bob"), account_uid("olga"));
        assert!(memo.holds(&ann) && memo.holds(&bob) && memo.holds(&olga));

        // bob joins olga's account: bob's entity changes, ann's and the
        // account's do not.
        store
            .write(|w| w.add_member("olga", "bob", "dev", 1))
            .unwrap_or_else(|e| panic!("{e}"));
        let after = entities("ann");
        assert!(memo.holds(&ann) && memo.holds(&olga), "kept");
        assert!(!memo.holds(&bob), "bob's entity was forgotten");
        assert!(after.get(&ann).is_some());
        let bob_now = entities("bob");
        let parents: Vec<String> = bob_now
            .ancestors(&bob)
            .map(|a| a.map(|p| p.to_string()).collect())
            .unwrap_or_default();
        assert!(
            parents.iter().any(|p| p == r#"Role::"olga/dev""#),
            "{parents:?}"
        );

        // A revision the memo cannot account for (as another replica's
        // write would be) forgets everything.
        let memo_gen = memo.inner.lock().map(|m| m.generation).unwrap_or(0);
        assert!(store.changed_between(memo_gen, memo_gen + 5).is_none());
    }

    /// The entities of one request as sorted JSON, to compare sets.
    fn canonical(entities: &Entities) -> Vec<String> {
        let mut out: Vec<String> = entities
            .iter()
            .map(|e| e.to_json_value().map(|v| v.to_string()).unwrap_or_default())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn an_inline_pod_joins_the_stored_entities_alike_before_and_after_it_is_remembered() {
        let (snapshot, _dir, store) = fixture();
        store
            .write(|w| {
                w.sign_up(&user("olga"), ADMIN_ROLE)?;
                w.convert("olga", "Acme")?;
                w.sign_up(&user("bob"), ADMIN_ROLE)?;
                w.add_member("olga", "bob", "dev", 1)
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let text = r#"[{"uid": {"type": "Pod", "id": "p1"}, "attrs": {"account": {"type": "Account", "id": "olga"}}, "parents": [{"type": "Account", "id": "olga"}]}]"#;
        let raw = RawValue::from_string(text.to_owned()).unwrap_or_else(|e| panic!("{e}"));
        let json: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        let (catalog, memo) = (RoleCatalog::default(), EntityMemo::default());
        let pod: EntityUid = r#"Pod::"p1""#.parse().unwrap_or_else(|e| panic!("{e}"));
        let bob = user_uid("bob");
        let entities = |inline: Inline<'_>| {
            let facts = Facts::new(&snapshot, &catalog, &memo, &store, 100);
            facts
                .entities(inline, &[(&bob, &pod)])
                .map(|e| e.into_owned())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        // The reference: the inline entities through Cedar's own JSON
        // parser, with the stored ones (as `Inline::None` adds them) merged
        // in by Cedar.
        let by_cedar = authz::parse_entities(&snapshot, &json).unwrap_or_else(|e| panic!("{e}"));
        let facts = Facts::new(&snapshot, &catalog, &memo, &store, 100);
        let stored: Vec<Entity> = facts
            .entities(Inline::None, &[(&bob, &account_uid("olga"))])
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .filter(|e| by_cedar.get(&e.uid()).is_none())
            .cloned()
            .collect();
        let expected = canonical(
            &by_cedar
                .add_entities(stored, None)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        // First sighting (assembled with the stored entities in one go),
        // second (also remembered alone), third (from the memo, the stored
        // entities added to the remembered set).
        for sighting in 1..=3 {
            let got = entities(Inline::Raw(&raw));
            assert_eq!(canonical(&got), expected, "sighting {sighting}");
            let ancestors: Vec<String> = got
                .ancestors(&bob)
                .map(|a| a.map(ToString::to_string).collect())
                .unwrap_or_default();
            assert!(
                ancestors.iter().any(|a| a == r#"Role::"olga/dev""#),
                "sighting {sighting}: {ancestors:?}"
            );
            assert!(
                got.get(&account_uid("olga")).is_some(),
                "sighting {sighting}"
            );
        }
        assert!(
            authz::remembered_set(&snapshot, &raw).is_some(),
            "remembered by the third sighting"
        );
    }
}
