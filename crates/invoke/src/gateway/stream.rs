//! Streams: relayed as they come, read to their usage even after the caller hangs up, then settled.

use super::*;

impl<L: Ledger, B: Bedrock> Gateway<L, B> {
    /// Relays an opened stream to `to` and settles it from its final usage: a caller that hangs
    /// up does not stop the reading (Bedrock bills the generation anyway), which goes on until
    /// the stream ends or its deadline; a stream that ends without usage, breaks off, or runs
    /// past its deadline is charged at its worst case. The first bytes are passed on as they
    /// come: settlement waits for the end, never the caller.
    /// A stream that breaks off ends the caller's with an error too, never as if complete.
    pub async fn relay(
        &self,
        opened: Box<Opened>,
        to: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) {
        let Opened {
            ticket,
            family,
            mut upstream,
            deadline,
            request_id,
            ..
        } = *opened;
        let mut guard = ChargeGuard {
            ledger: Arc::clone(&self.ledger),
            ticket: Some(ticket),
            remember_seconds: self.settings.hold_seconds,
        };
        let mut reader = StreamUsage::new(family);
        let mut listening = true;
        let mut broke: Option<String> = None;
        loop {
            match tokio::time::timeout_at(deadline.into(), upstream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    reader.feed(&chunk);
                    if listening && to.send(Ok(chunk)).await.is_err() {
                        listening = false;
                        tracing::info!(request = %request_id, "the caller hung up mid-stream; reading on to the usage");
                    }
                }
                Ok(Some(Err(e))) => {
                    broke = Some(e);
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    broke = Some("the stream ran past its deadline".into());
                    break;
                }
            }
        }
        if let Some(reason) = &broke
            && listening
        {
            let _ = to.send(Err(std::io::Error::other(reason.clone()))).await;
        }
        drop(to);
        let (usage, error) = reader.finish();
        let ticket = guard.disarm().expect("armed until the stream ended");
        let read = match broke.or(error) {
            Some(reason) => Err(Failure {
                reply: Reply::error(502, "ModelStreamErrorException", reason.clone()),
                refundable: false,
                reason,
            }),
            None => Ok(Answered {
                reply: Reply {
                    status: 200,
                    ..Reply::default()
                },
                usage,
            }),
        };
        let _ = self.complete(ticket, read, Front::Sync, &request_id).await;
    }
}
