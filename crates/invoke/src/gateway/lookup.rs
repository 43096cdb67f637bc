//! Looking up what a request is for: the cached budget configuration of its application, and
//! model aliases.

use super::*;

impl<L: Ledger, B: Bedrock> Gateway<L, B> {
    /// The application's configuration, shared: cloning it on every request cost a dozen
    /// allocations. Cached for [`Settings::config_ttl`].
    pub async fn config(
        &self,
        application: &str,
    ) -> Result<Option<Arc<BudgetConfig>>, LedgerError> {
        if let Some((at, config)) = self.configs.lock().expect("config cache").get(application)
            && at.elapsed() < self.settings.config_ttl
        {
            return Ok(config.clone());
        }
        let config = self.ledger.budget(application).await?.map(Arc::new);
        self.configs
            .lock()
            .expect("config cache")
            .insert(application.to_string(), (Instant::now(), config.clone()));
        Ok(config)
    }

    /// Resolves a path model (alias or ID) to a model ID.
    pub fn resolve_model(&self, model: &str) -> Option<String> {
        if let Some(id) = self.settings.models.get(model) {
            return Some(id.clone());
        }
        let looks_like_id = model.contains('.') || model.starts_with("arn:");
        let valid = !model.is_empty()
            && model.len() <= 2048
            && model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:/_-".contains(c));
        (looks_like_id && valid).then(|| model.to_string())
    }
}
