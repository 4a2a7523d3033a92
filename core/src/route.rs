//! Where a routed slot's completion goes: a [`Delivery`] into the slot's inbox.

use crate::completion::Completion;
use crate::inbox::InboxSender;

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
