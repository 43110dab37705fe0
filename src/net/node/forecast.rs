//! Elastic sharing with `policy = "forecast"`: the forecaster's learned
//! time-of-day profiles are kept in the store (`elastic_forecast_v1` in
//! `meta_v1`), so that a restart does not cost a period (a day) of
//! learning. They are written with the next batch whenever a profile
//! bucket is folded in (every 15 minutes with the defaults), and taken
//! back at start when the period and bucket count are unchanged.

use tracing::{error, info, warn};

use super::EventLoop;
use crate::core::elastic::{Elastic, ElasticMode, ForecastProfiles};
use crate::store::Store;

/// The `meta_v1` key of the stored profiles.
pub(super) const META_FORECAST: &str = "elastic_forecast_v1";

/// Take back the stored profiles, if any and if they fit the policy.
pub(super) fn restore(store: &Store, elastic: &mut Elastic) {
    if elastic.policy().mode != ElasticMode::Forecast {
        return;
    }
    match store.meta::<ForecastProfiles>(META_FORECAST) {
        Ok(Some(p)) if elastic.restore_profiles(&p) => {
            info!("elastic sharing: restored the learned forecast profile");
        }
        Ok(Some(_)) => info!(
            "elastic sharing: the stored forecast profile was learned with another \
             period or bucket count; learning afresh"
        ),
        Ok(None) => {}
        Err(e) => warn!(
            error = %e,
            "elastic sharing: cannot read the stored forecast profile; learning afresh"
        ),
    }
}

impl EventLoop {
    /// Queue the profiles for the next batch when they changed.
    pub(super) fn persist_forecast(&mut self) {
        let Some(p) = self
            .elastic
            .as_mut()
            .and_then(Elastic::take_changed_profiles)
        else {
            return;
        };
        match postcard::to_stdvec(&p) {
            Ok(bytes) => self
                .deferred
                .put_meta
                .push((META_FORECAST.to_owned(), bytes)),
            Err(e) => error!(error = %e, "cannot encode the forecast profile"),
        }
    }
}
