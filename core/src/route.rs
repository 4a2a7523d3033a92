//! Where a completion goes: what routing did with it ([`Routed`]) and, for a routed slot, the
//! [`Delivery`] into its inbox.

use crate::completion::Completion;
use crate::inbox::InboxSender;

/// What [`Dispatcher::handle_completion`](crate::Dispatcher::handle_completion) did with one
/// completion.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Routed {
    /// Stored for a live [`Operation`](crate::Operation) (woken if it was waiting).
    Woken = 0,
    /// Delivered with its resources into the slot's inbox.
    Delivered = 1,
    /// Freed an abandoned slot (its parked resources were dropped now), or a routed delivery
    /// failed (inbox full or closed; counted as `undeliverable` too) and the resources were
    /// dropped.
    Reclaimed = 2,
    /// The generation did not match the slot's current one: ignored.
    Stale = 3,
    /// Index out of range, or the slot was never posted at this generation: ignored.
    Unknown = 4,
    /// The slot already holds a completion for this generation: ignored.
    Duplicate = 5,
}

/// A routed completion, delivered into an inbox together with the resources parked at
/// [`Dispatcher::reserve_into`](crate::Dispatcher::reserve_into) (typically the receive
/// buffer).
#[derive(Debug)]
pub struct Delivery<R> {
    /// The completion.
    pub completion: Completion,
    /// The resources parked with the slot.
    pub resources: R,
}

/// The inbox a routed slot delivers into.
pub(crate) type Route<R> = InboxSender<Delivery<R>>;
