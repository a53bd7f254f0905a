//! The Observe gRPC service over a [`Hub`].

use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc},
};

use futures::Stream;
use podlens_proto::v1::{self as pb, observe_server::Observe};
use tonic::{Request, Response, Status};

use crate::{filter::Filter, hub::Hub};

pub struct ObserveService {
    hub: Arc<Hub>,
}

impl ObserveService {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::ObserveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Observe for ObserveService {
    type ObserveStream = ObserveStream;

    async fn observe(&self, request: Request<pb::ObserveRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let filter = Filter::from_request(request.get_ref()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sub = self
            .hub
            .subscribe(filter, request.get_ref().since_unix_nano)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let stream = futures::stream::unfold(Some(sub), |state| async move {
            let mut sub = state?;
            match sub.recv().await {
                Some((record, origin)) => {
                    let origin = Some((*origin).clone());
                    Some((Ok(pb::ObserveResponse { record: Some(record), origin }), Some(sub)))
                }
                None if sub.lagged.load(Ordering::Acquire) => Some((
                    Err(Status::resource_exhausted(
                        "consumer fell behind its buffer and was disconnected; reconnect and read faster",
                    )),
                    None,
                )),
                None => None,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
