//! A streamed answer whose data frames are rewritten as they pass: the shape the client's model
//! name ([`super::rename`]) and the Responses API's sealed ids ([`super::sealed`]) share. A frame
//! the rewrite leaves alone passes as it came (no copy); trailers and the stream's end pass
//! untouched.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// What is done to each data frame.
pub trait Rewrite {
    /// `data` rewritten; `None` to pass it as it came.
    fn rewrite(&mut self, data: &[u8]) -> Option<Bytes>;
}

pin_project! {
    /// `inner` with every data frame passed through `rewrite`.
    pub struct Rewritten<B, R> {
        #[pin]
        inner: B,
        rewrite: R,
    }
}

impl<B, R> Rewritten<B, R> {
    pub fn new(inner: B, rewrite: R) -> Self {
        Rewritten { inner, rewrite }
    }
}

impl<B: Body<Data = Bytes>, R: Rewrite> Body for Rewritten<B, R> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| match frame.data_ref().and_then(|data| this.rewrite.rewrite(data)) {
                Some(rewritten) => Frame::data(rewritten),
                None => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // A rewritten frame changes length: only the lower bound of nothing holds.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    /// Upper-cases the frames that start with `!`, and counts the frames it saw.
    struct Shout(usize);

    impl Rewrite for Shout {
        fn rewrite(&mut self, data: &[u8]) -> Option<Bytes> {
            self.0 += 1;
            data.starts_with(b"!").then(|| Bytes::from(data.to_ascii_uppercase()))
        }
    }

    #[tokio::test]
    async fn data_frames_are_rewritten_in_order_and_trailers_pass() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-end", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"keep"))),
            Ok(Frame::data(Bytes::from_static(b"!loud"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let mut body = Rewritten::new(StreamBody::new(futures_util::stream::iter(frames)), Shout(0));
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            seen.push(frame.unwrap());
        }
        assert_eq!(seen[0].data_ref().map(|data| &data[..]), Some(&b"keep"[..]));
        assert_eq!(seen[1].data_ref().map(|data| &data[..]), Some(&b"!LOUD"[..]));
        assert_eq!(seen[2].trailers_ref(), Some(&trailers));
        assert_eq!(body.rewrite.0, 2, "only data frames are offered to the rewrite");
    }
}
