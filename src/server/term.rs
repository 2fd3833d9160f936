//! Leadership terms: the scheduler and the reference clock run once per term, and stop the
//! moment it ends.

use std::future::Future;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Runs `term(epoch, token)` for every leadership term announced on `leading`, one at a time.
/// The token is cancelled when the term ends (leadership lost or moved to another epoch) or on
/// shutdown, and the next term starts only after the previous one has returned, so a deposed
/// leader's broadcasting stops within one step.
pub(crate) async fn per_term<F, Fut>(
    mut leading: watch::Receiver<Option<u64>>,
    shutdown: &CancellationToken,
    mut term: F,
) where
    F: FnMut(u64, CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let epoch = loop {
            if let Some(e) = *leading.borrow_and_update() {
                break e;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = leading.changed() => if changed.is_err() { return },
            }
        };
        let token = shutdown.child_token();
        let run = term(epoch, token.clone());
        tokio::pin!(run);
        let over = loop {
            tokio::select! {
                _ = &mut run => break false,
                changed = leading.changed() => {
                    if changed.is_err() || *leading.borrow() != Some(epoch) {
                        break true;
                    }
                }
            }
        };
        if over {
            token.cancel();
            run.await;
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}
